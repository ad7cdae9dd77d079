"""A local Ollama seen from its own host: ``ollama serve`` found by its listening port, its runner
children, its effective settings (the ``server config`` log line, the runner's command line,
``/proc/PID/environ``), the model blob on disk, and its own log.

Facts this relies on: ../shared/reference/ollama-server-side.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

import httpx

from perfkit.kinds.ollama import restore
from perfkit.kinds.ollama.settings import to_env
from perfkit.servers import procs
from perfkit.core.children import clean_env
from perfkit.core.errors import PerfkitError
from perfkit.core.clock import now_ns
from perfkit.core.settings import parse_keep_alive_s, validate_settings
from perfkit.servers.control.device import local_device
from perfkit.servers.control.base import RestartInfo, ServerControl, SettingCheck, Unknown

def base_env() -> dict[str, str]:
    """The environment a restarted ``ollama serve`` starts from: perfkit's, without any OLLAMA_* setting and
    without the variables that mark a process as part of a perfkit run (the user's server outlives the run)."""
    return {k: v for k, v in clean_env().items() if not k.startswith("OLLAMA_")}


def restore_pending(record: Path) -> RestartInfo | None:
    """Give a user's Ollama its own settings back from a restore record left by a perfkit that is gone (a watchdog,
    or the next perfkit on the host); the record and its copies are removed. None when there was nothing to do:
    someone restored it meanwhile, or the server on the port is no longer the one that perfkit started (the user
    restarted or stopped it since, so what runs is theirs)."""
    rec = restore.read(record)
    if rec is None:
        return None
    u = urlparse(rec.url)
    port = u.port or 11434
    host_record = restore.host_record_path(port)
    with restore.restoring(host_record):
        rec = restore.read(record)  # again, under the lock
        if rec is None:
            return None
        listening = procs.listening_pid(port, u.hostname or "127.0.0.1")
        info = None
        if listening is not None and rec.server_pid in (None, listening):
            ctl = LocalOllamaControl(rec.url, restart_command=rec.restart_command, ready_timeout_s=rec.ready_timeout_s)
            env = base_env()
            env.update(rec.user_env)
            info = ctl._restart_with(env)
        restore.remove(host_record)
        restore.remove(record)
        return info


_FA_UNSUPPORTED = re.compile(r"flash attention.*(not supported|disabled)", re.I)


def _truthy(v: str) -> bool | None:
    v = (v or "").strip().lower()
    if v in ("1", "true", "on", "yes"):
        return True
    if v in ("0", "false", "off", "no"):
        return False
    return None


def same_value(key: str, wanted: str, effective: str) -> bool:
    """Whether the server's effective value is the wanted one, in the way Ollama spells each setting."""
    if key == "OLLAMA_FLASH_ATTENTION":
        w = _truthy(wanted)
        return (effective or "").strip().lower() in ("", "auto") if w is None else _truthy(effective) is w
    if key == "OLLAMA_KEEP_ALIVE":
        try:
            return abs(parse_keep_alive_s(wanted) - parse_keep_alive_s(effective)) < 1e-6
        except ValueError:
            return False
    if key == "OLLAMA_KV_CACHE_TYPE":
        return (effective or "f16").lower() == (wanted or "f16").lower()
    return str(wanted).strip().lower() == str(effective).strip().lower()


class LocalOllamaControl(ServerControl):
    """Args:
        url: the server's URL (its port finds the process).
        restart_command: argument list that restarts ``ollama serve``; the settings are put in its environment.
        log: a ``perfkit.serverlog.LogSource`` (a file or a command such as ``journalctl -u ollama``), or None.
        headers: sent with the readiness probe (never recorded).
        ready_timeout_s: how long a restarted server may take to answer.
    """

    name = "ollama-local"
    is_local = True

    def __init__(self, url: str, *, restart_command: Sequence[str] | None = None, log=None,
                 headers: Mapping[str, str] | None = None, ready_timeout_s: float = 120.0):
        self.url = url.rstrip("/")
        u = urlparse(self.url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 11434
        self.restart_command = list(restart_command) if restart_command else None
        self.log = log
        self.headers = dict(headers or {})
        self.ready_timeout_s = ready_timeout_s
        self._log_mark = log.mark() if log else None
        self._user_env: dict[str, str] | None = None  # the server's own OLLAMA_* before perfkit restarted it
        self._settings: dict[str, Any] = {}  # what perfkit last applied (None in restart() means these)
        self.restarts: list[RestartInfo] = []
        # A copy of the host's restore record (perfkit.servers.restore) in the run's directory, for the next
        # run there; the host's own record and its watchdog are what give the server back.
        self.restore_record: Path | None = None
        self.watchdog_pid: int | None = None

    # ---- processes -----------------------------------------------------------------------------
    def serve_pid(self) -> int | None:
        return procs.listening_pid(self.port, self.host)

    def server_pids(self) -> list[int]:
        pid = self.serve_pid()
        return [pid] if pid else []

    def runners(self) -> list:
        pid = self.serve_pid()
        return procs.runners(pid) if pid else []

    def why_not_local(self) -> str:
        return f"no process on this host listens on port {self.port}"

    # ---- restart ---------------------------------------------------------------------------------
    def can_restart(self) -> bool:
        return bool(self.restart_command)

    def _server_env(self) -> dict[str, str]:
        pid = self.serve_pid()
        env = procs.environ(pid) if pid else None
        return {k: v for k, v in (env or {}).items() if k.startswith("OLLAMA_")}

    def restart(self, settings: Mapping[str, Any] | None) -> RestartInfo:
        """Run the restart command with the user's own OLLAMA_* settings overlaid by ``settings`` (None:
        those perfkit applied last), and wait until a *new* server process answers (a new pid, and
        ``/api/version``)."""
        if settings is None:
            settings = self._settings
        self._settings = dict(settings)
        if not self.restart_command:
            raise Unknown("backend.restart_command is not set: perfkit can't apply server settings to this Ollama")
        if self._user_env is None:
            self._take_server()
        env = base_env()
        env.update(self._user_env)
        env.update(to_env(settings))
        self._note_server(None)  # in flux: whatever listens once this process is gone runs on the run's settings
        info = self._restart_with(env)
        self._note_server(info.pid_after)
        return info

    def _note_server(self, pid: int | None) -> None:
        rec = restore.read(self.host_record)
        if rec is not None:
            rec.server_pid = pid
            restore.write(self.host_record, rec)

    @property
    def host_record(self) -> Path:
        return restore.host_record_path(self.port)

    def _take_server(self) -> None:
        """Before the first restart: note the user's own settings where a restore finds them whatever ends this
        process, and start the watchdog that restores them if it dies first. A server still on the settings of a
        perfkit that died keeps its user's settings from that record, not from its environment (which is that
        run's); one that another live perfkit has changed is not taken."""
        with restore.restoring(self.host_record) as prev:
            if prev is not None and prev.writer_alive and prev.writer.get("pid") != os.getpid():
                raise PerfkitError(f"the server at {self.url} is on the settings of another perfkit (pid "
                                   f"{prev.writer.get('pid')}), which gives them back when it ends; run one at a time")
            dead_runs = prev is not None and prev.server_pid in (None, self.serve_pid())
            self._user_env = dict(prev.user_env) if dead_runs else self._server_env()
            mirrors = [str(self.restore_record)] if self.restore_record is not None else []
            restore.write(self.host_record, restore.RestoreRecord(
                self.url, list(self.restart_command or []), self._user_env, self.ready_timeout_s, mirrors=mirrors))
        self.watchdog_pid = restore.start_watchdog(self.host_record)

    def recover(self) -> RestartInfo | None:
        """Give the server its own settings back now if a perfkit that is gone left it on others (no watchdog did)."""
        if not restore.orphaned(self.port):
            return None
        return restore_pending(self.host_record)

    def restore(self) -> RestartInfo | None:
        """Give the user back the server as it was: restart it with its original OLLAMA_* environment."""
        if self._user_env is None or not self.restart_command:
            return None
        with restore.restoring(self.host_record):
            env = base_env()
            env.update(self._user_env)
            info = self._restart_with(env)
            self._user_env = None
            restore.remove(self.host_record)
            if self.restore_record is not None:
                self.restore_record.unlink(missing_ok=True)
        return info

    def _restart_with(self, env: dict[str, str]) -> RestartInfo:
        pid_before = self.serve_pid()
        if self.log:
            self._log_mark = self.log.mark()
        wall, t0 = time.time(), now_ns()
        # Its own session: a `nohup ollama serve &` it leaves behind must not die with us (a Ray actor's end kills
        # its process group), nor get a terminal's signals meant for perfkit. Output to a file on the host, not a
        # pipe: a server left in the background keeps the command's stdout, and a pipe would wait for it to end.
        out_path = restore.state_dir() / "restore" / f"restart-{self.port}.out"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "w+") as out:
            r = subprocess.run(self.restart_command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600,
                               stdin=subprocess.DEVNULL, start_new_session=True)
            out.seek(0)
            said = out.read(4000)[-300:].strip()
        if r.returncode:
            raise PerfkitError(f"restart command {self.restart_command} failed (exit {r.returncode}): {said}")
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(headers=self.headers, timeout=2.0) as c:
            while time.monotonic() < deadline:
                pid = self.serve_pid()
                if pid and pid != pid_before:
                    try:
                        if c.get(self.url + "/api/version").status_code == 200:
                            info = RestartInfo(t0, now_ns(), wall, pid_before, pid)
                            self.restarts.append(info)
                            return info
                    except httpx.HTTPError:
                        pass
                time.sleep(0.02)
        raise PerfkitError(f"ollama at {self.url} did not come back as a new process within "
                           f"{self.ready_timeout_s:g} s after `{' '.join(self.restart_command)}`")

    # ---- settings in effect --------------------------------------------------------------------------
    def log_events(self) -> list:
        """The server's log since the last restart (or since perfkit started watching), parsed."""
        if not self.log:
            return []
        from perfkit.servers.serverlog import parse

        return parse(self.log.read_since(self._log_mark))

    def settings_in_effect(self, wanted: Mapping[str, Any], model: str | None = None) -> dict[str, SettingCheck]:
        events = self.log_events()
        config = next((e for e in reversed(events) if e.kind == "server_config"), None)
        env_effective = config.fields.get("env", {}) if config else {}
        fa_warning = next((e for e in events if e.kind == "warning" and _FA_UNSUPPORTED.search(e.fields.get("msg", "")
                                                                                               or e.line)), None)
        runner = None
        if model is not None:
            runner = self._runner_for(model)
        explicit = self._server_env()
        out: dict[str, SettingCheck] = {}
        for key, value in validate_settings(wanted).items():
            if not key.startswith("OLLAMA_"):
                out[key] = SettingCheck(key, value, "unverifiable", None,
                                        "a per-request option on Ollama, not a server setting")
                continue
            if key in env_effective:
                eff = env_effective[key]
                if key == "OLLAMA_FLASH_ATTENTION" and fa_warning and _truthy(value):
                    out[key] = SettingCheck(key, value, "not applied", "off",
                                            f"the server logged: {fa_warning.fields.get('msg') or fa_warning.line}")
                elif same_value(key, value, eff):
                    ev = "the server's `server config` log line after the restart"
                    ev += self._runner_evidence(key, value, runner)
                    out[key] = SettingCheck(key, value, "confirmed", eff, ev)
                else:
                    out[key] = SettingCheck(key, value, "not applied", eff,
                                            f"the server's `server config` log line says {key}={eff!r}")
            elif key in explicit:
                status = "confirmed" if same_value(key, value, explicit[key]) else "not applied"
                out[key] = SettingCheck(key, value, status, explicit[key],
                                        "the server process's environment (/proc/PID/environ); the effective "
                                        "configuration is logged only in the server log, which "
                                        + ("was not given (backend.server_log)" if not self.log else "has no `server config` line since the restart"))
            else:
                why = ("no server log was given (backend.server_log) and the variable is not in the server "
                       "process's environment" if not self.log else
                       "the server log has no `server config` line since the restart, and the variable is not "
                       "in the server process's environment")
                out[key] = SettingCheck(key, value, "unverifiable", None, why)
        return out

    def _runner_for(self, model: str):
        try:
            path = str(self.model_file(model))
        except Unknown:
            return None
        return next((r for r in self.runners() if r.model_path == path), None)

    @staticmethod
    def _runner_evidence(key: str, value: str, runner) -> str:
        if runner is None or not runner.flags:
            return ""
        f = runner.flags
        if key == "OLLAMA_NUM_PARALLEL" and "--parallel" in f:
            return f"; the runner runs with --parallel {f['--parallel']}"
        if key == "OLLAMA_CONTEXT_LENGTH" and "--ctx-size" in f:
            return f"; the runner runs with --ctx-size {f['--ctx-size']} (num_ctx × parallel)"
        if key == "OLLAMA_FLASH_ATTENTION" and "--flash-attn" in f:
            # A bare --flash-attn (older runners) means on; newer ones say on/off/auto.
            return f"; the runner runs with --flash-attn {f['--flash-attn'] or 'on'}"
        return ""

    # ---- files, log, device ---------------------------------------------------------------------
    def _show(self, model: str) -> dict:
        with httpx.Client(headers=self.headers, timeout=30.0) as c:
            r = c.post(self.url + "/api/show", json={"model": model})
            r.raise_for_status()
            return r.json()

    def model_file(self, model: str) -> Path:
        """The runner's ``--model`` path when the model is loaded, else the ``FROM`` line of its modelfile."""
        try:
            show = self._show(model)
        except httpx.HTTPStatusError as e:
            raise Unknown(f"the server's /api/show answered HTTP {e.response.status_code} for {model!r}") from None
        except httpx.HTTPError:
            raise Unknown(f"the server did not answer /api/show for {model!r}") from None
        m = re.search(r"^FROM\s+(\S+)", show.get("modelfile") or "", re.M)
        if m and Path(m.group(1)).is_file():
            return Path(m.group(1))
        for r in self.runners():
            if r.model_path and Path(r.model_path).is_file() and (not m or Path(r.model_path).name in m.group(1)):
                return Path(r.model_path)
        raise Unknown(f"the model file of {model!r} is not readable on this host "
                      f"(modelfile FROM: {m.group(1) if m else 'none'})")

    def log_source(self):
        return self.log

    def device(self, model: str, backend=None):
        ps = next((m for m in (backend.ps() if backend else []) if backend.same_model(m, model)), None)
        if ps is None:
            from perfkit.servers.control.base import Device

            return Device("unknown", unknown_because=f"{model!r} is not loaded, so /api/ps can't say where it runs")
        size, vram = ps.get("size"), ps.get("size_vram")
        pids = set(self.server_pids())
        for pid in list(pids):
            pids.update(procs.process_tree(pid))
        ev = f"/api/ps: size {size} B, size_vram {vram} B"
        off = self._offload_event(model)
        if off:
            ev += f"; log: offloaded {off.fields.get('layers_gpu')}/{off.fields.get('layers_total')} layers to GPU"
        return local_device(size, vram, pids, ev)

    def _offload_event(self, model: str):
        """The loader's "offloaded N/M layers" line of this model's latest runner (the log holds every model's)."""
        try:
            path = str(self.model_file(model))
        except Unknown:
            return None
        events = self.log_events()
        starts = [i for i, e in enumerate(events) if e.kind == "runner_start" and e.fields.get("model_path") == path]
        if not starts:
            return None
        for e in events[starts[-1]:]:
            if e.kind == "runner_start" and e is not events[starts[-1]]:
                break
            if e.kind == "offload" and e.fields.get("stage", "actual") == "actual":
                return e
        return None

    def wait_memory_released(self, model: str, timeout_s: float = 120.0) -> float | None:
        """Ollama drops a model from /api/ps before its runner has exited and freed its (V)RAM: wait for the runner."""
        try:
            path = str(self.model_file(model))
        except Unknown:
            return None
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if not any(r.model_path == path for r in self.runners()):
                return time.monotonic() - t0
            time.sleep(0.01)
        return time.monotonic() - t0

    def describe(self) -> dict[str, Any]:
        pid = self.serve_pid()
        return {**super().describe(), "serve_pid": pid, "restart_command": self.restart_command,
                "restore_watchdog_pid": self.watchdog_pid,
                "log": self.log.describe() if self.log else None,
                "runners": [{"pid": r.pid, "argv": r.argv} for r in self.runners()]}


def ollama_control(url: str, *, restart_command=None, log=None, headers=None, ready_timeout_s: float = 120.0
                   ) -> ServerControl:
    """A local Ollama's controller when a process on this host listens on the URL's port, else a
    remote one that says why it can't see more."""
    from perfkit.servers.control import RemoteControl

    u = urlparse(url)
    host, port = u.hostname or "127.0.0.1", u.port or 11434
    if not procs.is_local_host(host):
        return RemoteControl(url, f"the server at {url} is on another host ({host}); only its HTTP API is visible "
                                  "(run perfkit on the server itself to see its processes, files and log)")
    if procs.listening_pid(port, host) is None:
        return RemoteControl(url, f"no process on this host is seen listening on port {port} (a container's "
                                  "port forward, or a process perfkit may not inspect)")
    return LocalOllamaControl(url, restart_command=restart_command, log=log, headers=headers,
                              ready_timeout_s=ready_timeout_s)
