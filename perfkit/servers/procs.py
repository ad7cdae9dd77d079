"""A local inference server seen from its own host: which process listens, its runners, their settings.

Everything here reads the process table (psutil, ``/proc``); nothing talks to the server. A server runs each
loaded model in a child process (the runner) whose command line names the model file and often the settings;
the command-line shapes a server kind's runners have are registered by the kind (:func:`register_runner`).
Processes are found by the port they listen on and by parentage, never by name, since names vary by install.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psutil



@dataclass(frozen=True)
class RunnerShape:
    """A runner's command line as a server kind writes it: one of ``exes`` (basenames, so that wrappers in front —
    numactl, taskset, an interpreter — don't hide it), followed by the word ``then`` where there is one; the
    runner is ``kind``, or ``kind_with_flag`` when ``flag`` is among its arguments."""

    exes: frozenset[str]
    kind: str
    then: str | None = None
    flag: str | None = None
    kind_with_flag: str | None = None

    def match(self, argv: list[str], i: int) -> tuple[str, int] | None:
        """(the runner's kind, where its flags start) when ``argv[i]`` begins this shape; None otherwise."""
        if Path(argv[i].replace("\\", "/")).name.lower() not in self.exes:
            return None
        start = i + 1
        if self.then is not None:
            if i + 1 >= len(argv) or argv[i + 1] != self.then:
                return None
            start = i + 2
        kind = self.kind_with_flag if self.flag is not None and self.flag in argv[start:] else self.kind
        return kind, start


_SHAPES: list[RunnerShape] = []


def register_runner(shape: RunnerShape) -> None:
    """A runner command line a server kind understands (at its import)."""
    if shape not in _SHAPES:
        _SHAPES.append(shape)


# Short and alias spellings of the llama.cpp runtime's flags (which runners of several kinds take) mapped to one
# long name, so callers
# look up one key whatever spelling the command line used.
_FLAG_ALIASES = {
    "-m": "--model",
    "-c": "--ctx-size",
    "-np": "--parallel",
    "-fa": "--flash-attn",
    "-ctk": "--cache-type-k",
    "-ctv": "--cache-type-v",
    "-ngl": "--n-gpu-layers",
    "--gpu-layers": "--n-gpu-layers",
    "-t": "--threads",
    "-tb": "--threads-batch",
    "-b": "--batch-size",
    "-ub": "--ubatch-size",
    "-kvu": "--kv-unified",
    "-mg": "--main-gpu",
    "-sm": "--split-mode",
    "-ts": "--tensor-split",
    "-a": "--alias",
    "-v": "--verbose",
    "-lv": "--log-verbosity",
    "--verbosity": "--log-verbosity",
}

@dataclass
class RunnerArgv:
    """What a runner's command line says. ``flags`` keys are long flag names (``--ctx-size``); a flag
    given without a value (``--no-mmap``) maps to ""."""

    argv: list[str]
    kind: str
    model_path: str | None
    flags: dict[str, str] = field(default_factory=dict)
    port: int | None = None


@dataclass
class RunnerProcess:
    """A live runner process: its command line, parsed, and when it started (epoch seconds)."""

    pid: int
    argv: list[str]
    kind: str
    model_path: str | None
    flags: dict[str, str]
    create_time_unix_s: float
    port: int | None = None


def _is_value(token: str) -> bool:
    # "-1" (n-gpu-layers), "-0.5" are values; "-c", "--port" are flags.
    if not token.startswith("-"):
        return True
    try:
        float(token)
        return True
    except ValueError:
        return False


def _parse_flags(args: list[str]) -> dict[str, str]:
    flags: dict[str, str] = {}
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("-") or tok in ("-", "--"):
            i += 1
            continue
        if tok.startswith("--") and "=" in tok:
            name, value = tok.split("=", 1)
            i += 1
        elif i + 1 < len(args) and _is_value(args[i + 1]):
            name, value = tok, args[i + 1]
            i += 2
        else:
            # Boolean flag (--embedding, bare -fa of older llama.cpp) or one followed by another flag.
            name, value = tok, ""
            i += 1
        flags[_FLAG_ALIASES.get(name, name)] = value
    return flags


def parse_runner_argv(argv: list[str]) -> RunnerArgv:
    """Classify a command line by the registered runner shapes and pull out the model file and flags
    (``--flag=value`` forms too). Anything in front of the executable (an interpreter, numactl) is skipped; a
    command line of no known shape is ``unknown``, its flags read from its first argument on."""
    argv = [str(a) for a in argv]
    kind, start = "unknown", 1
    for i in range(len(argv)):
        found = next((m for m in (sh.match(argv, i) for sh in _SHAPES) if m is not None), None)
        if found is not None:
            kind, start = found
            break
    flags = _parse_flags(argv[start:])
    model = flags.get("--model") or None
    port = None
    if flags.get("--port", "").isdigit():
        port = int(flags["--port"])
    return RunnerArgv(argv=argv, kind=kind, model_path=model, flags=flags, port=port)


# --- which process listens on a port -------------------------------------------------------------


def _resolve(host: str, timeout_s: float = 2.0) -> set[str]:
    """Addresses a host name stands for; a name that does not resolve within timeout_s gives none."""
    host = host.strip("[]")
    try:
        return {str(ipaddress.ip_address(host.split("%")[0]))}
    except ValueError:
        pass
    out: set[str] = set()

    def work() -> None:
        try:
            for *_, sa in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
                out.add(str(ipaddress.ip_address(sa[0].split("%")[0])))
        except (OSError, ValueError, TypeError):  # TypeError: a resolver torn down under the thread
            pass

    # getaddrinfo has no timeout and a dead DNS server can stall it for many seconds.
    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout_s)
    return set(out)


def _unmap(ip: str) -> str:
    """'::ffff:127.0.0.1' → '127.0.0.1' so IPv4 clients of a dual-stack socket compare equal."""
    try:
        a = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return ip
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped:
        return str(a.ipv4_mapped)
    return str(a)


def _addr_matches(listen_ip: str, wanted: set[str]) -> bool:
    ip = _unmap(listen_ip)
    if ip in ("0.0.0.0", "::") or ip in wanted:
        return True
    if wanted & {"0.0.0.0", "::"}:  # OLLAMA_HOST=0.0.0.0: clients reach it on any local address
        return True
    # A server bound to ::1 answers "localhost" as well as one bound to 127.0.0.1.
    try:
        lo = ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False
    return lo and any(ipaddress.ip_address(w).is_loopback for w in wanted)


def _proc_net_listeners(port: int) -> list[tuple[str, int]]:
    """(address, socket inode) of LISTEN sockets on ``port`` from /proc/net/tcp and tcp6."""
    out: list[tuple[str, int]] = []
    for name, v6 in (("tcp", False), ("tcp6", True)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            parts = ln.split()
            if len(parts) < 10 or parts[3] != "0A":  # 0A = TCP_LISTEN
                continue
            hexip, hexport = parts[1].split(":")
            if int(hexport, 16) != port:
                continue
            raw = bytes.fromhex(hexip)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = str(ipaddress.IPv6Address(raw) if v6 else ipaddress.IPv4Address(raw))
            out.append((ip, int(parts[9])))
    return out


def _pid_of_inode(inodes: set[int]) -> int | None:
    wanted = {f"socket:[{i}]" for i in inodes}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            for fd in (d / "fd").iterdir():
                try:
                    if os.readlink(fd) in wanted:
                        return int(d.name)
                except OSError:
                    continue
        except OSError:  # another user's process, or it just exited
            continue
    return None


def listening_pid(port: int, host: str = "127.0.0.1") -> int | None:
    """The PID of the process listening on TCP ``port`` at ``host`` (or on all addresses); None if none
    is found or it belongs to a user whose processes we cannot see."""
    wanted = _resolve(host) or {host}
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError, OSError):
        conns = None
    if conns is not None:
        for c in conns:
            if (c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                    and _addr_matches(c.laddr.ip, wanted)):
                if c.pid is not None:
                    return c.pid
                break  # seen but pid hidden (other user): try /proc below
    inodes = {ino for ip, ino in _proc_net_listeners(port) if _addr_matches(ip, wanted) and ino}
    return _pid_of_inode(inodes) if inodes else None


def is_local_host(host: str) -> bool:
    """True when ``host`` (a name or address, optionally ``[v6]``) is this machine: loopback, an address
    of one of its interfaces, or its own host name."""
    h = host.strip().strip("[]").split("%")[0]
    if not h:
        return False
    low = h.lower()
    if low == "localhost" or low.endswith(".localhost"):
        return True
    own_names = {socket.gethostname().lower()}
    try:
        own_names.add(socket.getfqdn().lower())
    except OSError:
        pass
    if low in own_names:
        return True
    own_ips: set[str] = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                own_ips.add(_unmap(a.address.split("%")[0]))
    for ip in _resolve(h):
        ip = _unmap(ip)
        a = ipaddress.ip_address(ip)
        if a.is_loopback or a.is_unspecified or ip in own_ips:
            return True
    return False


# --- the process tree ----------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants; [] when the process does not exist."""
    try:
        p = psutil.Process(pid)
        return [pid] + [c.pid for c in p.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def runners(server_pid: int) -> list[RunnerProcess]:
    """Descendants of the server whose command line is a runner's (see parse_runner_argv), oldest first."""
    out: list[RunnerProcess] = []
    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
    for c in children:
        try:
            argv = c.cmdline()
            created = c.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        r = parse_runner_argv(argv)
        if r.kind == "unknown":
            continue
        out.append(RunnerProcess(pid=c.pid, argv=r.argv, kind=r.kind, model_path=r.model_path, flags=r.flags,
                                 create_time_unix_s=created, port=r.port))
    return sorted(out, key=lambda r: (r.create_time_unix_s, r.pid))


def environ(pid: int) -> dict[str, str] | None:
    """The environment a process was started with (``/proc/PID/environ``): only variables set explicitly,
    no defaults. None when unreadable (another user's process, gone, or no /proc); never raises."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        try:
            return dict(psutil.Process(pid).environ())
        except Exception:  # noqa: BLE001  (any failure means "unknown", which None says)
            return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
    return env
