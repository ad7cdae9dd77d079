"""The one table that turns settings (by role, see ``perfkit.core.settings``) into llama-server flags, and the
check that a model process really runs with them (its arguments as the router reports them)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

from perfkit.core import settings as S
from perfkit.core.errors import ConfigError


def _keep_alive_flags(v: str) -> list[str]:
    seconds = S.parse_keep_alive_s(v)
    # llama-server has no "forever": a negative keep-alive simply means no idle sleep.
    return [] if seconds < 0 else ["--sleep-idle-seconds", str(max(1, int(round(seconds))))]


FLAGS: dict[str, Callable[[str], list[str]]] = {
    S.FLASH_ATTENTION: lambda v: ["-fa", S.FLASH_MODES[v]],
    S.PARALLEL: lambda v: ["-np", str(int(v))],
    S.KV_CACHE_TYPE: lambda v: ["-ctk", v, "-ctv", v],
    S.CONTEXT_LENGTH: lambda v: ["-c", str(int(v))],
    S.KEEP_ALIVE: _keep_alive_flags,
    S.MAX_LOADED_MODELS: lambda v: ["--models-max", str(int(v))],
    S.THREADS: lambda v: ["-t", str(int(v))],
    S.BATCH: lambda v: ["-b", str(int(v)), "-ub", str(int(v))],
    S.MMAP: lambda v: [] if v == "true" else ["--no-mmap"],
    # speculative decoding with a draft model of the same vocabulary (a smaller quantization of the same model)
    S.DRAFT_MODEL: lambda v: ["--spec-type", "draft-simple", "--spec-draft-model", v],
    S.DRAFT_MAX: lambda v: ["--spec-draft-n-max", str(int(v))],
    S.DRAFT_MIN: lambda v: ["--spec-draft-n-min", str(int(v))],
    S.CHAT_TEMPLATE: lambda v: _template_flags(v),
    S.THINK_BUDGET: lambda v: ["--reasoning-budget", str(int(v))],
}

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _template_flags(value: str) -> list[str]:
    # llama-server tells a template that can think to think unless told otherwise; perfkit's own thinks only
    # when a request asks (think: true), so that a request that says nothing is a plain chat.
    off = ["--reasoning", "off"] if value.startswith("builtin:") else []
    return ["--chat-template-file", str(template_file(value)), *off]


def template_file(value: str) -> Path:
    """The chat template a setting names: ``builtin:NAME`` is one shipped here, else the file itself."""
    if value.startswith("builtin:"):
        path = TEMPLATES / f"{value.split(':', 1)[1]}.jinja"
        if not path.is_file():
            have = ", ".join(f"builtin:{p.stem}" for p in sorted(TEMPLATES.glob("*.jinja")))
            raise ConfigError(f"chat_template {value!r}: no such template shipped with perfkit; shipped: {have}")
        return path
    return Path(value)


def to_flags(settings: Mapping[str, object], models_dir: Path | None = None) -> list[str]:
    """llama-server's arguments for these settings (any kind's names); a draft model named by its store name is
    that file of ``models_dir``."""
    return [f for key, value in S.validate_settings(settings).items() for f in _flags_of(key, value, models_dir)]


def _flags_of(key: str, value: str, models_dir: Path | None) -> list[str]:
    role = S.role_of(key)
    if S.ROLES[role].per_request:  # sent with each request, not a server flag
        return []
    if role == S.DRAFT_MODEL and models_dir is not None and "/" not in value and not value.endswith(".gguf"):
        value = str(Path(models_dir) / f"{value}.gguf")
    return FLAGS[role](value)


# The router passes settings to each model process in their long spelling.
_LONG = {"-fa": "--flash-attn", "-np": "--parallel", "-ctk": "--cache-type-k", "-ctv": "--cache-type-v",
         "-c": "--ctx-size", "-t": "--threads", "-b": "--batch-size", "-ub": "--ubatch-size",
         "--spec-draft-model": "--model-draft"}
_ROUTER_ONLY = {"--models-max"}


def check_applied(settings: Mapping[str, object], child_args: list[str],
                  models_dir: Path | None = None) -> dict[str, bool]:
    """For each setting (canonical name), whether the model process was really started with it."""
    pairs = {(a, b) for a, b in zip(child_args, child_args[1:])}
    flags = set(child_args)
    out: dict[str, bool] = {}
    for key, value in S.validate_settings(settings).items():
        fl = _flags_of(key, value, models_dir)
        ok = True
        i = 0
        while i < len(fl):
            name = _LONG.get(fl[i], fl[i])
            if name in _ROUTER_ONLY:
                i += 2
                continue
            if i + 1 < len(fl) and not fl[i + 1].startswith("-"):
                ok &= (name, fl[i + 1]) in pairs
                i += 2
            else:
                ok &= name in flags
                i += 1
        out[key] = ok
    return out
