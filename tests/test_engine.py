"""The real embedded engine: lifecycle, errors, and no process left behind, whatever happens."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from conftest import llama_server_pids
from perfkit.kinds.llamacpp.engine import Engine
from perfkit.core.errors import ConfigError, EngineError

pytestmark = pytest.mark.engine


def wait_gone(pids, timeout_s=15.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and set(pids) & set(llama_server_pids()):
        time.sleep(0.1)
    return not (set(pids) & set(llama_server_pids()))


def test_start_serve_stop_leaves_nothing(store_dir, tmp_path):
    before = set(llama_server_pids())
    with Engine(store_dir, {"num_thread": 2}, log_path=tmp_path / "e.log") as e:
        assert httpx.get(e.base_url + "/health").status_code == 200
        r = httpx.post(e.base_url + "/models/load", json={"model": "smollm2-135m-q4_1"})
        assert r.status_code == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = {m["id"]: m["status"]["value"] for m in httpx.get(e.base_url + "/models").json()["data"]}
            if st["smollm2-135m-q4_1"] == "loaded":
                break
            time.sleep(0.05)
        mine = set(llama_server_pids()) - before
        assert len(mine) >= 2  # the router and the model's own process
        assert e.command[e.command.index("-t") + 1] == "2"
    assert wait_gone(mine)
    assert "llama-server" in (tmp_path / "e.log").read_text()  # the log is kept


def test_port_busy(store_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(EngineError, match=f"port {s.getsockname()[1]} on 127.0.0.1 is busy"):
            Engine(store_dir, port=s.getsockname()[1]).start()


def test_unknown_setting_fails_before_starting(store_dir):
    with pytest.raises(ConfigError, match="unknown setting 'OLLAMA_TURBO'"):
        Engine(store_dir, {"OLLAMA_TURBO": 1})


def test_no_models(tmp_path):
    with pytest.raises(EngineError, match="no models in .*perfkit models prepare"):
        Engine(tmp_path).start()


def test_a_model_that_fails_to_load_says_so(small_store):
    (small_store / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 4096)
    from perfkit.kinds.llamacpp import LlamaServerBackend

    with Engine(small_store, {"num_thread": 2}) as e:
        b = LlamaServerBackend.from_engine(e)
        with pytest.raises(EngineError, match="model 'broken' failed to load"):
            b.load("broken", timeout_s=60)
        assert b.load("smollm2-135m-q4_1") > 0  # the server itself is fine


RUNNER = textwrap.dedent("""
    import sys, time
    from perfkit.kinds.llamacpp.engine import Engine
    from perfkit.cli import _sigterm
    import signal
    signal.signal(signal.SIGTERM, _sigterm)
    with Engine(sys.argv[1], {"num_thread": 2}) as e:
        import httpx
        httpx.post(e.base_url + "/models/load", json={"model": "smollm2-135m-q4_1"})
        time.sleep(1.5)
        print("READY", flush=True)
        time.sleep(600)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_runner_leaves_no_server(store_dir, sig):
    before = set(llama_server_pids())
    p = subprocess.Popen([sys.executable, "-c", RUNNER, str(store_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        mine = set(llama_server_pids()) - before
        assert mine
        p.send_signal(sig)  # Ctrl-C, a polite kill, and kill -9 (the kernel's parent-death signal)
        p.wait(timeout=30)
        assert wait_gone(mine), f"left behind after {sig.name}: {set(llama_server_pids()) & mine}"
    finally:
        p.kill()


def test_engine_cli_start_status_stop(store_dir, tmp_path):
    env = {**os.environ, "PERFKIT_CACHE": str(tmp_path), "PERFKIT_MODELS_DIR": str(store_dir)}

    def cli(*a):
        return subprocess.run([sys.executable, "-m", "perfkit", "engine", *a], capture_output=True, text=True,
                              env=env, timeout=120)

    r = cli("start", "--set", "OLLAMA_NUM_PARALLEL=2", "--set", "num_thread=2")
    assert r.returncode == 0, r.stderr
    assert "running at http://127.0.0.1:" in r.stdout
    pid = int(r.stdout.split("pid ")[1].split(")")[0])
    try:
        again = cli("start")
        assert again.returncode == 2 and "already running" in again.stderr
        st = cli("status")
        assert st.returncode == 0 and "smollm2-135m-q4_1" in st.stdout and "unloaded" in st.stdout
        assert "OLLAMA_NUM_PARALLEL" in st.stdout
    finally:
        stop = cli("stop")
    assert stop.returncode == 0 and f"stopped llama-server pid {pid}" in stop.stdout
    assert wait_gone([pid])
    assert cli("status").returncode == 3
