"""``perfkit agent``: a host joins the cluster as a server host or a client node, after checking what perfkit's
agent will see there (perfkit and Ray, NVML's GPUs, the server found by its port)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from perfkit.cluster.agent import RESOURCE_CLIENT, RESOURCE_HOST
from perfkit.core import host
from perfkit.core.errors import PerfkitError
from perfkit.core.schema import host_name


def check(server_url: str | None = None) -> list[tuple[str, str]]:
    """(what, what this host shows) for the agent's view of it; nothing here starts anything."""
    out = [("perfkit", host.versions().get("perfkit") or "not installed as a package")]
    try:
        import ray

        out.append(("ray", ray.__version__))
    except ImportError:
        out.append(("ray", "NOT INSTALLED: pip install 'perfkit[cluster]'"))
    gpus = host.gpus()
    out.append(("GPUs (NVML)", ", ".join(f"{g['index']}: {g['name']}" for g in gpus) if gpus else
                "none seen (no NVIDIA driver, or a CPU host): GPU figures will be unknown"))
    if server_url:
        from perfkit.servers import procs

        u = urlparse(server_url)
        pid = procs.listening_pid(u.port or 11434, u.hostname or "127.0.0.1")
        out.append(("server", f"pid {pid} listens on port {u.port or 11434}" if pid else
                    f"NOTHING listens on port {u.port or 11434} here (give the server's command in hosts[] to have "
                    "the agent start it)"))
    return out


def ray_command() -> str:
    exe = Path(sys.executable).with_name("ray")
    found = str(exe) if exe.exists() else shutil.which("ray")
    if not found:
        raise PerfkitError("the ray command is not installed: pip install 'perfkit[cluster]'")
    return found


def start_args(*, head: bool = False, address: str | None = None, server_host: str | None = None,
               client: str | None = None, port: int = 6379) -> list[str]:
    """The ``ray start`` command line for this role."""
    res = {}
    try:
        if server_host:
            res[RESOURCE_HOST + host_name(server_host)] = 1
        if client:
            res[RESOURCE_CLIENT + host_name(client)] = 1
    except ValueError as e:
        raise PerfkitError(f"--host/--client: {e}") from None
    args = [ray_command(), "start", "--disable-usage-stats"]
    if head:
        args += ["--head", f"--port={port}", "--include-dashboard=false"]
    elif address:
        args += [f"--address={address}"]
    else:
        raise PerfkitError("give --head, or --address HEAD:PORT to join a cluster")
    if res:
        args += [f"--resources={json.dumps(res)}"]
    return args


def run(args: list[str]) -> int:
    return subprocess.call(args)
