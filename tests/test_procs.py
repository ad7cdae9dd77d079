"""perfkit.servers.procs: a local server seen from its host, tested on real processes that look like Ollama's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from perfkit.servers import procs
from perfkit.servers.procs import environ, is_local_host, listening_pid, parse_runner_argv, process_tree, runners

# A stand-in for the `ollama` binary: `ollama serve` listens on a port, writes it to $FAKE_PORT_FILE
# and spawns two runners (old and new engine shapes) and one helper that is not a runner.
FAKE_OLLAMA = r'''
import os, signal, socket, subprocess, sys, time
if sys.argv[1] == "serve":
    s = socket.socket()
    s.bind((os.environ.get("FAKE_HOST", "127.0.0.1"), 0))
    s.listen()
    blobs = os.environ["FAKE_BLOBS"]
    kids = [
        subprocess.Popen([sys.argv[0], "runner", "--model", blobs + "/sha256-abc", "--ctx-size", "4096",
                          "--batch-size", "512", "--n-gpu-layers", "-1", "--threads", "2", "--parallel", "1",
                          "--port", "1234"]),
        subprocess.Popen([sys.argv[0], "runner", "--ollama-engine", "--model", blobs + "/sha256-def",
                          "--port", "1235"]),
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]),
    ]
    with open(os.environ["FAKE_PORT_FILE"] + ".tmp", "w") as f:
        f.write(str(s.getsockname()[1]))
    os.replace(os.environ["FAKE_PORT_FILE"] + ".tmp", os.environ["FAKE_PORT_FILE"])
    time.sleep(60)
else:
    time.sleep(60)
'''


@pytest.fixture
def fake_ollama(tmp_path):
    """A running fake `ollama serve` with two runner children: (server pid, port, blobs dir)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "ollama"
    exe.write_text(f"#!{sys.executable}\n{FAKE_OLLAMA}")
    exe.chmod(0o755)
    port_file = tmp_path / "port"
    env = {**os.environ, "FAKE_BLOBS": str(tmp_path / "blobs"), "FAKE_PORT_FILE": str(port_file),
           "OLLAMA_FLASH_ATTENTION": "1", "PERFKIT_TEST_MARKER": "env-seen"}
    # Own session, so the whole tree is stopped by one killpg of the group this test created.
    proc = subprocess.Popen([str(exe), "serve"], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fake ollama did not start (exit {proc.poll()})")
            time.sleep(0.02)
        port = int(port_file.read_text())
        yield proc.pid, port, tmp_path / "blobs"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def test_listening_pid_finds_the_server(fake_ollama):
    pid, port, _ = fake_ollama
    assert listening_pid(port) == pid
    assert listening_pid(port, "localhost") == pid


def test_listening_pid_none_for_free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert listening_pid(port) is None


def test_listening_pid_wildcard_bind():
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", 0))
        s.listen()
        assert listening_pid(s.getsockname()[1], "127.0.0.1") == os.getpid()
    finally:
        s.close()


def test_listening_pid_falls_back_to_proc(fake_ollama, monkeypatch):
    pid, port, _ = fake_ollama

    def denied(*a, **k):
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "net_connections", denied)
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp")
    assert listening_pid(port) == pid


def test_runners_and_tree(fake_ollama):
    pid, _, blobs = fake_ollama
    # The children are spawned before the port file is written, so they exist now.
    found = runners(pid)
    assert [r.kind for r in found] == ["ollama-runner", "ollama-engine-runner"]
    old, new = found
    assert old.model_path == f"{blobs}/sha256-abc" and new.model_path == f"{blobs}/sha256-def"
    assert old.flags["--ctx-size"] == "4096" and old.flags["--n-gpu-layers"] == "-1" and old.port == 1234
    assert new.flags["--ollama-engine"] == "" and new.port == 1235
    assert abs(old.create_time_unix_s - time.time()) < 60
    assert old.argv[-2:] == ["--port", "1234"]

    tree = process_tree(pid)
    assert tree[0] == pid and {r.pid for r in found} <= set(tree) and len(tree) == 4
    assert process_tree(2**22 + 12345) == []
    assert runners(2**22 + 12345) == []


def test_environ(fake_ollama):
    pid, _, _ = fake_ollama
    env = environ(pid)
    assert env is not None
    assert env["PERFKIT_TEST_MARKER"] == "env-seen" and env["OLLAMA_FLASH_ATTENTION"] == "1"
    assert "OLLAMA_KEEP_ALIVE" not in env  # defaults are invisible here: only the log has them
    assert environ(2**22 + 12345) is None


def test_environ_unreadable_is_none(monkeypatch):
    def deny(self):
        raise PermissionError("denied")

    monkeypatch.setattr(Path, "read_bytes", deny)
    monkeypatch.setattr(psutil.Process, "environ", lambda self: (_ for _ in ()).throw(psutil.AccessDenied()))
    assert environ(os.getpid()) is None


# --- command lines --------------------------------------------------------------------------------


def test_parse_ollama_runner():
    r = parse_runner_argv(["/usr/local/bin/ollama", "runner", "--model", "/root/.ollama/models/blobs/sha256-aa",
                           "--ctx-size", "8192", "--batch-size", "512", "--n-gpu-layers", "81", "--threads", "16",
                           "--parallel", "1", "--port", "40751"])
    assert r.kind == "ollama-runner" and r.model_path == "/root/.ollama/models/blobs/sha256-aa" and r.port == 40751
    assert r.flags == {"--model": "/root/.ollama/models/blobs/sha256-aa", "--ctx-size": "8192", "--batch-size": "512",
                       "--n-gpu-layers": "81", "--threads": "16", "--parallel": "1", "--port": "40751"}


def test_parse_ollama_engine_runner_and_old_server():
    r = parse_runner_argv(["ollama", "runner", "--ollama-engine", "--model", "/m/blobs/sha256-bb", "--port", "1"])
    assert (r.kind, r.model_path, r.flags["--ollama-engine"]) == ("ollama-engine-runner", "/m/blobs/sha256-bb", "")
    old = parse_runner_argv(["/tmp/ollama1/runners/cuda_v12/ollama_llama_server", "--model", "/m/b", "--embedding",
                             "--log-disable", "--flash-attn", "--n-gpu-layers", "33", "--port", "35991"])
    assert old.kind == "ollama-runner" and old.flags["--embedding"] == "" and old.flags["--flash-attn"] == ""
    assert old.flags["--n-gpu-layers"] == "33"


def test_parse_llama_server_short_and_equals_forms():
    r = parse_runner_argv(["/opt/llama/bin/llama-server", "-m", "/models/q.gguf", "-c", "16384", "-np", "4",
                           "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0", "-ngl", "99", "-t", "8", "--port=8081",
                           "--host", "127.0.0.1", "-kvu", "--no-mmap"])
    assert r.kind == "llama-server" and r.model_path == "/models/q.gguf" and r.port == 8081
    f = r.flags
    assert (f["--ctx-size"], f["--parallel"], f["--flash-attn"], f["--cache-type-k"], f["--cache-type-v"]) == (
        "16384", "4", "on", "q8_0", "q8_0")
    assert (f["--n-gpu-layers"], f["--threads"], f["--kv-unified"], f["--no-mmap"]) == ("99", "8", "", "")
    eq = parse_runner_argv(["llama-server", "--model=/m.gguf", "--ctx-size=2048", "--parallel=2"])
    assert (eq.model_path, eq.flags["--ctx-size"], eq.flags["--parallel"]) == ("/m.gguf", "2048", "2")


def test_parse_wrapped_and_unknown():
    # An interpreter (or numactl) in front does not hide the executable.
    r = parse_runner_argv(["/usr/bin/python3", "/tmp/bin/ollama", "runner", "--model", "/b/sha256-cc", "--port", "9"])
    assert (r.kind, r.model_path) == ("ollama-runner", "/b/sha256-cc")
    assert parse_runner_argv(["numactl", "-N", "0", "llama-server", "-m", "x.gguf"]).kind == "llama-server"
    assert parse_runner_argv(["ollama", "serve"]).kind == "unknown"
    assert parse_runner_argv(["python", "-c", "pass"]).kind == "unknown"
    assert parse_runner_argv([]).kind == "unknown"


# --- is this host local? --------------------------------------------------------------------------


def test_is_local_host():
    for h in ("localhost", "127.0.0.1", "127.3.4.5", "::1", "[::1]", "0.0.0.0", socket.gethostname()):
        assert is_local_host(h), h
    own = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
           if a.family == socket.AF_INET and not a.address.startswith("127.")]
    if own:
        assert is_local_host(own[0])
    assert not is_local_host("192.0.2.1")  # TEST-NET-1, never assigned
    assert not is_local_host("")


def test_is_local_host_unresolvable_name(monkeypatch):
    def fail(*a, **k):
        raise socket.gaierror("no such host")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    assert not is_local_host("gpu-box.invalid")


def test_resolve_times_out(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: time.sleep(5))
    t = time.monotonic()
    assert procs._resolve("slow.invalid", timeout_s=0.2) == set()
    assert time.monotonic() - t < 2


# --- the real embedded engine (slow: run with -m engine) ------------------------------------------


@pytest.mark.engine
def test_real_llama_server_router(store_dir, tmp_path):
    import httpx

    from perfkit.kinds.llamacpp.engine import Engine
    from perfkit.servers.serverlog import FileLogSource, parse

    log = tmp_path / "engine.log"
    with Engine(store_dir, {"num_thread": 2}, log_path=log, extra_args=["--log-timestamps", "--log-prefix"]) as e:
        src = FileLogSource(log)
        mark = src.mark()
        assert listening_pid(e.port, e.host) == e.proc.pid
        t_req = time.time()
        r = httpx.post(e.base_url + "/v1/chat/completions", timeout=120,
                       json={"model": "smollm2-135m-q4_1", "max_tokens": 4,
                             "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        found = runners(e.proc.pid)
        assert [x.kind for x in found] == ["llama-server"]
        assert found[0].model_path.endswith("smollm2-135m-q4_1.gguf") and found[0].port
        time.sleep(0.3)
        lines = src.read_since(mark)
        t0 = float(log.read_text().splitlines()[0].split()[-1])
        evs = parse(lines, t0_wall_unix_s=t0)
    kinds = [ev.kind for ev in evs]
    assert "runner_start" in kinds and "model_loaded" in kinds and "timing" in kinds
    loaded = next(ev for ev in evs if ev.kind == "model_loaded")
    # The child's clock, placed at the router's spawn line, lands in the request's window.
    assert t_req - 1 < loaded.wall_unix_s < time.time()
