"""Ollama: its native API (``/api/chat``, ``/api/ps`` …), a local server's processes, environment and log, a
restart command that applies settings through the environment (and gives the user's own back), and the
``OLLAMA_*`` names every report uses for settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from perfkit import kinds
from perfkit.client.probe import ProbeSpec
from perfkit.core import settings as S
from perfkit.kinds.base import ServerKind
from perfkit.servers import procs
from perfkit.kinds.ollama import logformat  # noqa: F401  (registers its log lines)
from perfkit.kinds.ollama import settings as ollama_settings
from perfkit.kinds.ollama.client import OllamaBackend, canonical_name, keep_alive_value
from perfkit.kinds.ollama.control import LocalOllamaControl, ollama_control, restore_pending

# ``ollama runner --model BLOB --ctx-size N … --port P``; with ``--ollama-engine`` the settings go over the port,
# not the command line; Ollama < 0.4 ran ``ollama_llama_server --model …``.
procs.register_runner(procs.RunnerShape(frozenset({"ollama", "ollama.exe"}), "ollama-runner", then="runner",
                                        flag="--ollama-engine", kind_with_flag="ollama-engine-runner"))
procs.register_runner(procs.RunnerShape(frozenset({"ollama_llama_server", "ollama_llama_server.exe"}),
                                        "ollama-runner"))


def _identify(body: dict, shown: str, status: int) -> str:
    if "version" not in body:
        raise ValueError("without a 'version'")
    return f"ollama {body['version']} at {shown}"


@kinds.register
class Ollama(ServerKind):
    name = "ollama"
    title = "Ollama"
    backend = OllamaBackend
    probe = ProbeSpec("/api/version", "the Ollama API", "ollama serve", _identify)
    keys = frozenset({"restart_command", "server_log"})
    agent_driven = True
    restart_hint = " (see scripts/restart-ollama.sh)"
    order = 20
    tuning_space = {S.PARALLEL: [1, 2, 4, 8], S.FLASH_ATTENTION: [0, 1], S.KV_CACHE_TYPE: ["f16", "q8_0", "q4_0"]}

    def has_model(self, names: list[str], model: str) -> bool:
        # Ollama resolves a bare name to its ":latest" tag, case-insensitively.
        return canonical_name(model) in {canonical_name(n) for n in names}

    def deploy_files(self, settings: Mapping[str, object], head: str, model: str) -> dict[str, str]:
        env = ollama_settings.to_env(settings)
        return {
            "ollama.env": head + "".join(f"{k}={v}\n" for k, v in env.items()),
            "ollama.service.d/override.conf": head + "[Service]\n" + "".join(f'Environment="{k}={v}"\n'
                                                                          for k, v in env.items()),
            "docker-compose.environment.yml": head + "environment:\n" + "".join(f'  {k}: "{v}"\n'
                                                                               for k, v in env.items()),
        }

    def restore_pending(self, record: Path) -> Any:
        return restore_pending(record)

    def open_on_host(self, spec: Mapping[str, Any], settings: Mapping[str, Any], *, log_path: Path, log: Any,
                     where: str) -> tuple[Any, OllamaBackend, Any]:
        from perfkit.core.errors import PerfkitError
        from perfkit.kinds.ollama.owned import OwnedOllamaControl

        url, recovered = spec["url"], None
        if spec.get("command"):
            ctl = OwnedOllamaControl(url, spec["command"], env=spec.get("env") or {}, log_path=log_path,
                                     ready_timeout_s=spec.get("ready_timeout_s") or 120.0)
            ctl.restart(settings)
        else:
            ctl = LocalOllamaControl(url, restart_command=spec.get("restart_command"), log=log,
                                     ready_timeout_s=spec.get("ready_timeout_s") or 120.0)
            if ctl.serve_pid() is None:
                raise PerfkitError(f"{where}: no process listens on port {ctl.port} (hosts[].url {url}); give the "
                                   "server's command to have the agent start it")
            recovered = ctl.recover()  # a run that died left it on its settings: the user's first
            if settings and ctl.can_restart():
                ctl.restart(settings)
        return ctl, OllamaBackend.create(url, inspect_host=False), recovered

    def create_backend(self, url: str | None, *, engine=None, **opts: Any) -> OllamaBackend:
        return super().create_backend(url, **opts)  # type: ignore[return-value]


__all__ = ["Ollama", "logformat", "OllamaBackend", "LocalOllamaControl", "keep_alive_value", "ollama_control", "restore_pending"]
