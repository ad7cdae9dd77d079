"""The embedded engine seen from its own host: perfkit started it, so it sees everything."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from perfkit.core.clock import now_ns
from perfkit.core.settings import validate_settings
from perfkit.kinds.llamacpp.flags import check_applied
from perfkit.servers.control.device import cpu_device
from perfkit.servers.control.base import RestartInfo, ServerControl, SettingCheck, Unknown


class EngineControl(ServerControl):
    """Controls a ``perfkit.engine.Engine`` (llama-server in router mode) and reads its model processes.

    Args:
        engine: the running engine.
        backend: its ``LlamaServerBackend`` (for ``/models`` and ``/props``).
    """

    name = "embedded"
    is_local = True

    def __init__(self, engine, backend):
        self.engine, self.backend = engine, backend

    def can_restart(self) -> bool:
        return True

    def restart(self, settings: Mapping[str, Any] | None) -> RestartInfo:
        pid_before = self.engine.proc.pid if self.engine.proc else None
        wall, t0 = time.time(), now_ns()
        self.engine.restart(settings)
        self.backend.server_pid = self.engine.proc.pid
        return RestartInfo(t0, now_ns(), wall, pid_before, self.engine.proc.pid)

    def settings_in_effect(self, wanted: Mapping[str, Any], model: str | None = None) -> dict[str, SettingCheck]:
        """Each setting against the model process's own arguments (what the router passed it)."""
        if model is None:
            raise Unknown("the embedded engine passes settings to each model process: name a model to check")
        self.backend.load(model)
        status = self.backend.status().get(model, {})
        args = [str(a) for a in status.get("args", [])]
        applied = check_applied(wanted, args, self.engine.models_dir)
        out = {}
        for key, value in validate_settings(wanted).items():
            if applied.get(key):
                out[key] = SettingCheck(key, value, "confirmed", value, "the model process's own arguments (/models)")
            else:
                out[key] = SettingCheck(key, value, "not applied", None,
                                        "not found in the model process's arguments: " + " ".join(args)[:300])
        return out

    def slots(self, model: str) -> dict[str, Any]:
        p = self.backend.props(model)
        return {"total_slots": p.get("total_slots"),
                "n_ctx_per_slot": (p.get("default_generation_settings") or {}).get("n_ctx")}

    def server_pids(self) -> list[int]:
        return [self.engine.proc.pid] if self.engine.proc else []

    def model_file(self, model: str) -> Path:
        path = self.backend.model_path(model)
        if path is None:
            raise Unknown(f"{model!r} has no file in {self.engine.models_dir}")
        return path

    def log_source(self):
        from perfkit.servers.serverlog import FileLogSource

        return FileLogSource(self.engine.log_path) if self.engine.log_path else None

    def device(self, model: str, backend=None):
        return cpu_device("the embedded engine is a CPU build")

    def model_pid(self, model: str) -> int | None:
        """The router's process for ``model`` (it runs one per loaded model, named by --alias)."""
        import psutil

        if not self.engine.proc:
            return None
        try:
            for child in psutil.Process(self.engine.proc.pid).children(recursive=True):
                cmd = child.cmdline()
                if "--alias" in cmd and cmd[cmd.index("--alias") + 1:cmd.index("--alias") + 2] == [model]:
                    return child.pid
        except psutil.Error:
            pass
        return None

    def wait_memory_released(self, model: str, timeout_s: float = 120.0) -> float | None:
        """Wait until the model's own process has exited (its memory is then back)."""
        t0 = time.monotonic()
        while self.model_pid(model) is not None and time.monotonic() - t0 < timeout_s:
            time.sleep(0.01)
        return time.monotonic() - t0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "command": self.engine.command if self.engine.proc else None,
                "log": str(self.engine.log_path)}
