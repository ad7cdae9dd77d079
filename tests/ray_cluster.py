"""A Ray cluster of three nodes on this machine for the cluster tests, started as a user starts one: ``ray start
--head`` and ``ray start --address`` per node, each node with its own temp directory and its own ports, each in a
session of its own (so that one node can be killed alone). The head is client node ``c1``; node 2 is server host
``gpu-a`` and client node ``c2``; node 3 is server host ``gpu-b``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOSTS = ("gpu-a", "gpu-b")
CLIENTS = ("c1", "c2")
NODES = ({"perfkit-client:c1": 1}, {"perfkit-host:gpu-a": 1, "perfkit-client:c2": 1}, {"perfkit-host:gpu-b": 1})


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _ray() -> str:
    return shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


class RayCluster:
    """``.address`` for ``ray.init`` and ``cluster.address``; ``.kill_node(i)`` takes node i down as a crash
    would; ``.shutdown()`` stops every node (only this cluster's processes: another Ray on the machine stays)."""

    def __init__(self, resources=NODES, cpus=(2, 1, 1)):
        self.root = Path(tempfile.mkdtemp(prefix="pkray-", dir="/tmp"))  # Ray's socket paths must stay short
        self.groups: list[int] = []
        self.address = ""
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        try:
            for i, (res, cpu) in enumerate(zip(resources, cpus)):
                node_port, obj_port, agent_port, agent_grpc, metrics, rt_env, gcs = _free_ports(7)
                args = [_ray(), "start", "--num-cpus", str(cpu), "--resources", json.dumps(res),
                        "--temp-dir", str(self.root / f"n{i}"), "--node-manager-port", str(node_port),
                        "--object-manager-port", str(obj_port), "--dashboard-agent-listen-port", str(agent_port),
                        "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
                        "--runtime-env-agent-port", str(rt_env), "--min-worker-port", str(20000 + 2000 * i),
                        "--max-worker-port", str(20000 + 2000 * i + 999), "--disable-usage-stats"]
                if i == 0:
                    args += ["--head", "--port", str(gcs), "--include-dashboard", "false"]
                    self.address = f"127.0.0.1:{gcs}"
                else:
                    args += ["--address", self.address]
                p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
                self.groups.append(p.pid)
                out, _ = p.communicate(timeout=120)
                if p.returncode:
                    raise RuntimeError(f"ray start (node {i}) failed:\n{out[-3000:]}")
            self._wait_for_nodes(len(resources))
        except BaseException:
            self.shutdown()
            raise

    def _wait_for_nodes(self, n: int, timeout_s: float = 60.0) -> None:
        code = (f"import ray; ray.init(address={self.address!r}, logging_level='ERROR'); "
                "print(sum(1 for x in ray.nodes() if x['Alive']))")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
            if r.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{n} Ray nodes did not join within {timeout_s:g} s")

    def kill_node(self, i: int) -> None:
        """SIGKILL every process of node i (its raylet, its workers, their children)."""
        _killpg(self.groups[i])

    def shutdown(self) -> None:
        for pgid in reversed(self.groups):
            _killpg(pgid)
        shutil.rmtree(self.root, ignore_errors=True)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start() -> RayCluster:
    return RayCluster()
