"""llama.cpp's llama-server: a user's own (``kind: llama-server``) and the embedded engine perfkit builds, starts
and always stops (``kind: embedded``), both seen through the router's ``/models`` and the streamed ``/v1`` API
with its ``timings``."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Mapping

from perfkit import kinds
from perfkit.client.probe import ProbeSpec
from perfkit.core import host, settings as S
from perfkit.core.errors import ConfigError
from perfkit.kinds.base import ServerKind
from perfkit.sampling import exposition
from perfkit.servers import procs
from perfkit.sampling.exposition import Series
from perfkit.kinds.llamacpp.client import LlamaServerBackend
from perfkit.kinds.llamacpp.control import EngineControl
from perfkit.kinds.llamacpp import commands, models
from perfkit.kinds.llamacpp import logformat  # noqa: F401  (registers its log lines)
from perfkit.kinds.llamacpp.engine import ENGINE_LOG_ARGS, ENGINE_PACKAGE, Engine
from perfkit.kinds.llamacpp.flags import to_flags

host.register_engine_dist(ENGINE_PACKAGE)
# Speculative decoding: Ollama has no such setting, so these are llama-server's own names (runner settings).
S.register_names([S.Name("draft_model", S.DRAFT_MODEL, server_env=False, canonical=True),
                  S.Name("draft_max", S.DRAFT_MAX, server_env=False, canonical=True),
                  S.Name("draft_min", S.DRAFT_MIN, server_env=False, canonical=True),
                  S.Name("chat_template", S.CHAT_TEMPLATE, server_env=False, canonical=True),
                  S.Name("reasoning_budget", S.THINK_BUDGET, server_env=False, canonical=True)])
# llama-server -m FILE -c N -np N -fa on -ctk q8_0 -ngl 99 -t 8 (the router's child per model, or a user's own)
procs.register_runner(procs.RunnerShape(frozenset({"llama-server", "llama-server.exe", "llama_server"}),
                                        "llama-server"))
# llama-server --metrics (router mode: per model, /metrics?model=NAME)
exposition.register([
    Series("llamacpp:requests_processing", "server_requests_running", "server"),
    Series("llamacpp:requests_deferred", "server_requests_waiting", "server"),
    Series("llamacpp:n_busy_slots_per_decode", "server_busy_slots_per_decode", "server", combine="max"),
    Series("llamacpp:kv_cache_usage_ratio", "server_kv_cache_usage_ratio", "server", combine="max"),
    Series("llamacpp:kv_cache_tokens", "server_kv_cache_tokens", "server"),
    Series("llamacpp:prompt_tokens_total", "server_prompt_tokens_total", "server"),
    Series("llamacpp:prompt_tokens_cached_total", "server_prompt_tokens_cached_total", "server"),
    Series("llamacpp:tokens_predicted_total", "server_tokens_predicted_total", "server"),
])


def _identify(body: dict, shown: str, status: int) -> str:
    return f"llama-server at {shown} ({'loading' if status == 503 else body.get('status', 'ok')})"


@kinds.register
class LlamaServer(ServerKind):
    name = "llama-server"
    title = "llama.cpp llama-server"
    backend = LlamaServerBackend
    probe = ProbeSpec("/health", "a llama-server", "llama-server", _identify, loading_status=503)
    order = 30
    tuning_space = {S.PARALLEL: [1, 2, 4], S.FLASH_ATTENTION: [0, 1], S.KV_CACHE_TYPE: ["f16", "q8_0"],
                    S.BATCH: [64, 256, 512]}

    def deploy_files(self, settings: Mapping[str, object], head: str, model: str) -> dict[str, str]:
        flags = to_flags(settings)
        return {"llama-server.sh": head + "llama-server " + " ".join(shlex.quote(x) for x in flags)
                + f" -m {shlex.quote(model + '.gguf')}\n"}


@kinds.register
class Embedded(LlamaServer):
    """llama-server started by perfkit over its own model store (the main job's engine)."""

    name = "embedded"
    title = "the embedded engine (llama.cpp llama-server)"
    probe = None
    keys = frozenset({"models_dir"})
    started_by_perfkit = True
    needs_url = False
    order = 10

    def deploy_files(self, settings: Mapping[str, object], head: str, model: str) -> dict[str, str]:
        return {}  # the llama-server kind writes the same command line

    def check_ready(self, section: Any) -> None:
        from perfkit.core.errors import PerfkitError
        from perfkit.kinds.llamacpp.engine import binary

        binary()  # a clear error now if the engine is not built, not in a notebook cell later
        if not any(self.models_dir(section).glob("*.gguf")):
            raise PerfkitError("the model store is empty: run `perfkit models prepare`")

    def models_dir(self, section: Any) -> Path:
        return Path(section.models_dir).expanduser() if section.models_dir else models.models_dir()

    def check_models(self, section: Any, used: list[tuple[str, str]], where: str) -> None:
        have = sorted(p.stem for p in self.models_dir(section).glob("*.gguf"))
        for key, model in used:
            if model not in have:
                raise ConfigError(f"{where}: {key}: unknown model {model!r}; allowed: "
                                  f"{', '.join(have) or 'none yet (run `perfkit models prepare`)'}")

    def add_commands(self, sub: Any, *, settings_of: Any, port: Any) -> None:
        commands.add_commands(sub, settings_of=settings_of, port=port)

    def public(self) -> dict[str, Any]:
        return {"Engine": Engine, "models_dir": models.models_dir, "list_models": models.list_models}

    def start_server(self, models_dir: Path, settings: Mapping[str, Any], *, log_path: Path,
                     ready_timeout_s: float) -> Engine:
        engine = Engine(models_dir, settings, log_path=log_path, ready_timeout_s=ready_timeout_s,
                        extra_args=ENGINE_LOG_ARGS)
        engine.start()
        return engine

    def create_backend(self, url: str | None, *, engine=None, **opts: Any) -> LlamaServerBackend:
        if engine is None:
            raise ConfigError("the embedded backend needs a running engine")
        return LlamaServerBackend.from_engine(engine)


__all__ = ["Embedded", "logformat", "EngineControl", "LlamaServer", "LlamaServerBackend", "ENGINE_LOG_ARGS"]
