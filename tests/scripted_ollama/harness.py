"""Starting and stopping the scripted Ollama from tests (and benchmarks).

    with ScriptedOllama(tmp_path / "ollama") as so:
        backend = OllamaBackend(so.url)
        ...
        so.truth()          # the server's own account of every generate/chat request
        so.restart_command  # what perfkit should run to restart it with new OLLAMA_* settings

``scripted_ollama_fixture(tmp_path_factory)`` is a generator to register as a pytest fixture; its
model blobs are shared by every server of the session (written once).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import httpx
import psutil

from . import DEFAULT_VERSION, LOG_STYLES
from .models import ModelSpec, canonical, default_models, merge_models, resolve, write_store

HERE = Path(__file__).resolve().parent
SERVE_PY = HERE / "serve.py"
RESTART_SH = HERE / "restart.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ScriptedOllama:
    """A scripted ``ollama serve`` in its own directory ``home`` (log, truth, pid file, config).

    Args:
        home: its directory (created).
        port: listening port (default: a free one).
        env: OLLAMA_* settings for the first start (restarts take the restarting caller's environment).
        version: what /api/version says; also selects the log/command-line formats of that version
            (>= 0.12: "starting runner", short runner command line; older: "starting llama server"
            with every flag) and whether ``logprobs`` is honoured (>= 0.12.11).
        log_style: "slog", "journald" or "docker" (the line prefix a log transport adds).
        models: overrides, model name → ModelSpec fields (e.g. ``{"tiny": {"load_s": 0.5}}``); an unknown
            name adds a model.
        models_dir: where blobs and manifests live (OLLAMA_MODELS); default ``home/models``. Share one
            between servers to write the blobs once.
    """

    def __init__(self, home: str | Path, *, port: int | None = None, env: Mapping[str, str] | None = None,
                 version: str = DEFAULT_VERSION, log_style: str = "slog",
                 models: Mapping[str, Mapping[str, Any]] | None = None, models_dir: str | Path | None = None,
                 startup_timeout_s: float = 20.0):
        if log_style not in LOG_STYLES:
            raise ValueError(f"log_style {log_style!r}; allowed: {', '.join(LOG_STYLES)}")
        self.home = Path(home).resolve()
        self.port = port or free_port()
        self.env = {k: str(v) for k, v in (env or {}).items()}
        self.version, self.log_style = version, log_style
        self.specs: list[ModelSpec] = merge_models(default_models(), models)
        self.models_dir = Path(models_dir).resolve() if models_dir else self.home / "models"
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen | None = None
        self._seen_pids: set[int] = set()
        self._started = False
        atexit.register(self._atexit)

    # ---- addresses and files ------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    @property
    def truth_path(self) -> Path:
        return self.home / "truth.jsonl"

    @property
    def restart_command(self) -> list[str]:
        """argv for perfkit's restart hook; the home is in the argv because perfkit only adds OLLAMA_* to the env."""
        return ["bash", str(RESTART_SH), str(self.home)]

    @property
    def nohup_restart_command(self) -> list[str]:
        """Like ``restart_command``, but the server stays in the caller's session and process group, as a
        ``nohup ollama serve &`` leaves it."""
        return [*self.restart_command, "--nohup"]

    def blob_path(self, model: str) -> Path:
        """The model file on disk (what the runner's --model names)."""
        spec = self.spec(model)
        manifest = json.loads((self.models_dir / "manifests" / "registry.ollama.ai" / "library" /
                               spec.name.split(":")[0] / spec.name.split(":")[1]).read_text())
        layer = next(lay for lay in manifest["layers"] if lay["mediaType"].endswith(".model"))
        return self.models_dir / "blobs" / layer["digest"].replace(":", "-")

    def spec(self, model: str) -> ModelSpec:
        key = resolve(model, [s.name for s in self.specs])
        if key is None:
            raise KeyError(f"no scripted model {model!r}; have {[s.name for s in self.specs]}")
        return next(s for s in self.specs if s.name == key)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def truth(self) -> list[dict]:
        """truth.jsonl as dicts (kind: generate | load | unload | error)."""
        if not self.truth_path.exists():
            return []
        rows = []
        for line in self.truth_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows

    # ---- processes -----------------------------------------------------------------------------
    def serve_pid(self) -> int | None:
        try:
            pid = int((self.home / "serve.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def runner_pids(self) -> list[int]:
        """Runner processes of the current server (children whose command line is ``... runner --model``)."""
        pid = self.serve_pid()
        if pid is None:
            return []
        out = []
        try:
            for c in psutil.Process(pid).children(recursive=True):
                try:
                    if "runner" in c.cmdline() and c.status() != psutil.STATUS_ZOMBIE:
                        out.append(c.pid)
                except psutil.Error:
                    continue
        except psutil.Error:
            return []
        return sorted(out)

    def leftover_processes(self) -> list[int]:
        """Every live process of this home: the server and its runners all carry SCRIPTED_OLLAMA_HOME=home
        in their environment, whoever started them (harness, restart.sh) and whatever their parent."""
        mark = f"SCRIPTED_OLLAMA_HOME={self.home}"
        out = []
        for p in psutil.process_iter(["pid"]):
            if p.pid == os.getpid():
                continue
            try:
                environ = Path(f"/proc/{p.pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if mark.encode() in environ and _alive(p.pid):
                out.append(p.pid)
        return sorted(out)

    def ps(self) -> list[dict]:
        return httpx.get(f"{self.url}/api/ps", timeout=5).json().get("models", [])

    # ---- life cycle ----------------------------------------------------------------------------
    def write_config(self) -> None:
        """Blobs, manifests, scripted.json, base.env (what restart.sh keeps), python (the interpreter)."""
        self.home.mkdir(parents=True, exist_ok=True)
        write_store(self.models_dir, self.specs)
        (self.home / "scripted.json").write_text(json.dumps(
            {"version": self.version, "log_style": self.log_style,
             "models": [s.to_json() for s in self.specs]}, indent=1))
        # Only the server's identity survives a restart by default; settings come from the caller.
        (self.home / "base.env").write_text(f"OLLAMA_HOST=127.0.0.1:{self.port}\nOLLAMA_MODELS={self.models_dir}\n")
        (self.home / "python").write_text(sys.executable)

    def server_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "SCRIPTED_OLLAMA_"))}
        env.update({"OLLAMA_HOST": f"127.0.0.1:{self.port}", "OLLAMA_MODELS": str(self.models_dir),
                    "SCRIPTED_OLLAMA_HOME": str(self.home), "PYTHONUNBUFFERED": "1"})
        env.update(self.env)
        env.update(extra or {})
        return env

    def start(self) -> "ScriptedOllama":
        try:
            self.write_config()
            with open(self.log_path, "ab") as logf:
                self._proc = subprocess.Popen([sys.executable, str(SERVE_PY), "--home", str(self.home)],
                                              env=self.server_env(), stdin=subprocess.DEVNULL, stdout=logf,
                                              stderr=logf, start_new_session=True, close_fds=True)
            # Reap it the moment it exits (a restart replaces it): no "[ollama] <defunct>" lingers.
            threading.Thread(target=self._proc.wait, name="scripted-ollama-reaper", daemon=True).start()
            self._started = True
            self._seen_pids.add(self._proc.pid)
            self.wait_ready(new_pid_of=None)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, new_pid_of: int | None = None, timeout_s: float | None = None) -> int:
        """Wait until a server (other than PID ``new_pid_of``) wrote its pid and answers /api/version."""
        deadline = time.monotonic() + (timeout_s or self.startup_timeout_s)
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None and new_pid_of is None:
                raise RuntimeError(f"scripted ollama exited with {self._proc.returncode}; "
                                   f"log:\n{self.log_text()[-3000:]}")
            pid = self.serve_pid()
            if pid and pid != new_pid_of:
                try:
                    if httpx.get(f"{self.url}/api/version", timeout=1).status_code == 200:
                        self._seen_pids.add(pid)
                        return pid
                except httpx.HTTPError:
                    pass
            time.sleep(0.02)
        raise TimeoutError(f"scripted ollama not ready in {timeout_s or self.startup_timeout_s} s; "
                           f"log:\n{self.log_text()[-3000:]}")

    def restart(self, env: Mapping[str, str] | None = None) -> int:
        """Run the restart command as perfkit would (this process's env + ``env``); wait; return the new PID."""
        old = self.serve_pid()
        full = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "SCRIPTED_OLLAMA_"))}
        full.update(env or {})
        subprocess.run(self.restart_command, env=full, check=True, timeout=30)
        return self.wait_ready(new_pid_of=old)

    def _tree(self) -> set[int]:
        pids = set(self._seen_pids) | set(self.leftover_processes())
        cur = self.serve_pid()
        if cur:
            pids.add(cur)
        for pid in list(pids):
            try:
                pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
            except psutil.Error:
                pass
        return {p for p in pids if _alive(p)}

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the server (it kills its runners), SIGKILL what remains, and verify nothing is left."""
        pids = self._tree()
        cur = self.serve_pid()
        if cur:
            _signal(cur, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s / 2
        while time.monotonic() < deadline and any(_alive(p) for p in pids | self._tree()):
            self._reap()
            time.sleep(0.02)
        left = {p for p in pids | self._tree() if _alive(p)}
        for p in left:
            _signal(p, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s / 2
        while time.monotonic() < deadline and any(_alive(p) for p in left):
            self._reap()
            time.sleep(0.02)
        self._reap()
        left = sorted({p for p in left if _alive(p)} | set(self.leftover_processes()))
        self._started = False
        if left:
            raise RuntimeError(f"scripted ollama: processes left after stop: {left}")

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.poll()

    def _atexit(self) -> None:
        if self._started:
            try:
                self.stop()
            except Exception:  # noqa: BLE001 - interpreter exit: best effort
                pass

    def __enter__(self) -> "ScriptedOllama":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_SHARED: dict[str, Path] = {}


def shared_models_dir(tmp_path_factory: Any) -> Path:
    """One blob store per pytest session (blobs are written once, then hard-reused)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _SHARED:
        _SHARED[key] = tmp_path_factory.mktemp("scripted-ollama-models")
    return _SHARED[key]


def scripted_ollama_fixture(tmp_path_factory: Any, **kw: Any) -> Iterator[ScriptedOllama]:
    """Register as a fixture: ``@pytest.fixture\\ndef scripted_ollama(tmp_path_factory):
    yield from scripted_ollama_fixture(tmp_path_factory)``. Stopped (and checked) after the test."""
    home = tmp_path_factory.mktemp("scripted-ollama")
    with ScriptedOllama(home, models_dir=shared_models_dir(tmp_path_factory), **kw) as so:
        yield so


__all__ = ["ScriptedOllama", "scripted_ollama_fixture", "shared_models_dir", "free_port", "canonical"]
