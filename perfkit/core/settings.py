"""Server settings by their Ollama names, and the one table that turns them into llama-server flags.

A study names settings the way an Ollama user does (``OLLAMA_NUM_PARALLEL=4``); the embedded
engine receives the equivalent llama-server flags, an Ollama server receives them as its
environment. Values are validated here, before any server starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping

from perfkit.core.errors import ConfigError

_KV_TYPES = ("f16", "q8_0", "q4_0")
_GO_DURATION = re.compile(r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


def parse_keep_alive_s(value: object) -> float:
    """Ollama's keep_alive → seconds (negative = forever). Accepts numbers and Go durations ("5m", "1h30m")."""
    if isinstance(value, bool):
        raise ValueError("a number of seconds or a duration like '5m'")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    if not _GO_DURATION.match(text):
        raise ValueError("a number of seconds or a duration like '5m', '90s', '1h30m', '-1'")
    sign = -1.0 if text.startswith("-") else 1.0
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    total = sum(float(n) * units[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)(ns|us|µs|ms|s|m|h)", text))
    return sign * total


# Ollama's OLLAMA_FLASH_ATTENTION values → llama-server's -fa modes (unset means auto).
_FLASH = {"1": "on", "true": "on", "0": "off", "false": "off", "": "auto", "auto": "auto"}


def _flash(v: str) -> list[str]:
    return ["-fa", _FLASH[v]]


def _positive_int(v: str) -> int:
    n = int(v)
    if n < 1:
        raise ValueError
    return n


def _one_of(*choices: str) -> Callable[[str], str]:
    def check(v: str) -> str:
        if v not in choices:
            raise ValueError
        return v
    return check


def _keep_alive_flags(v: str) -> list[str]:
    seconds = parse_keep_alive_s(v)
    # llama-server has no "forever": a negative keep_alive simply means no idle sleep.
    return [] if seconds < 0 else ["--sleep-idle-seconds", str(max(1, int(round(seconds))))]


@dataclass(frozen=True)
class Setting:
    """One server setting: its Ollama name, what values it takes, and how llama-server spells it."""

    name: str
    allowed: str
    to_flags: Callable[[str], list[str]]
    check: Callable[[str], object]


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("OLLAMA_FLASH_ATTENTION", "1, 0 or auto", _flash,
                _one_of(*_FLASH)),
        Setting("OLLAMA_NUM_PARALLEL", "an integer ≥ 1", lambda v: ["-np", str(int(v))], _positive_int),
        Setting("OLLAMA_KV_CACHE_TYPE", " | ".join(_KV_TYPES), lambda v: ["-ctk", v, "-ctv", v],
                _one_of(*_KV_TYPES)),
        Setting("OLLAMA_CONTEXT_LENGTH", "an integer ≥ 1 (tokens)", lambda v: ["-c", str(int(v))], _positive_int),
        Setting("OLLAMA_KEEP_ALIVE", "seconds or a duration like '5m' (negative = forever)",
                _keep_alive_flags, parse_keep_alive_s),
        Setting("OLLAMA_MAX_LOADED_MODELS", "an integer ≥ 1", lambda v: ["--models-max", str(int(v))], _positive_int),
        # Not server env vars in Ollama (they are per-request options there), but runner settings here.
        Setting("num_thread", "an integer ≥ 1", lambda v: ["-t", str(int(v))], _positive_int),
        Setting("num_batch", "an integer ≥ 1", lambda v: ["-b", str(int(v)), "-ub", str(int(v))], _positive_int),
        Setting("use_mmap", "true or false", lambda v: [] if v == "true" else ["--no-mmap"],
                _one_of("true", "false")),
    ]
}


def _norm(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().lower() if not isinstance(value, str) else value.strip()


def validate_settings(settings: Mapping[str, object], where: str = "settings") -> dict[str, str]:
    """Check names and values; return them normalised to strings. Raises ConfigError naming the key."""
    out: dict[str, str] = {}
    for key, value in settings.items():
        if key not in SETTINGS:
            raise ConfigError(f"{where}: unknown setting {key!r}; allowed: {', '.join(SETTINGS)}")
        v = _norm(value)
        if key == "OLLAMA_FLASH_ATTENTION":
            v = v.lower()
        try:
            SETTINGS[key].check(v)
        except (ValueError, TypeError):
            raise ConfigError(f"{where}: {key}={value!r} is not allowed; allowed: {SETTINGS[key].allowed}") from None
        out[key] = v
    return out


def to_llama_server_flags(settings: Mapping[str, object]) -> list[str]:
    """The one translation table from Ollama-named settings to llama-server arguments."""
    flags: list[str] = []
    for key, value in validate_settings(settings).items():
        flags += SETTINGS[key].to_flags(value)
    return flags


def to_ollama_env(settings: Mapping[str, object]) -> dict[str, str]:
    """Settings an Ollama server reads from its environment (per-request options are left out)."""
    return {k: v for k, v in validate_settings(settings).items() if k.startswith("OLLAMA_")}


# llama-server's router passes settings to each model process in their long spelling.
_LONG = {"-fa": "--flash-attn", "-np": "--parallel", "-ctk": "--cache-type-k", "-ctv": "--cache-type-v",
         "-c": "--ctx-size", "-t": "--threads", "-b": "--batch-size", "-ub": "--ubatch-size"}
_ROUTER_ONLY = {"--models-max"}


def check_applied(settings: Mapping[str, object], child_args: list[str]) -> dict[str, bool]:
    """For each setting, whether the model process was really started with it (from ``/models`` args)."""
    pairs = {(a, b) for a, b in zip(child_args, child_args[1:])}
    flags = set(child_args)
    out: dict[str, bool] = {}
    for key, value in validate_settings(settings).items():
        fl = SETTINGS[key].to_flags(value)
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


def settings_label(setting: Mapping[str, object]) -> str:
    """A setting as a report names it: 'FLASH_ATTENTION=1, NUM_PARALLEL=4', 'defaults' when empty."""
    return ", ".join(f"{k.removeprefix('OLLAMA_')}={v}" for k, v in validate_settings(setting).items()) or "defaults"


def known_conflicts(settings: Mapping[str, object]) -> list[str]:
    """Settings the engine is known to refuse together, in words (a server that failed to start with them is
    explained by these); [] when none is known."""
    s = {k: _norm(v) for k, v in settings.items()}
    out = []
    if s.get("OLLAMA_KV_CACHE_TYPE", "f16") != "f16" and s.get("OLLAMA_FLASH_ATTENTION") in ("0", "false", "off"):
        out.append("a quantized KV cache needs flash attention in llama.cpp (and so in Ollama)")
    return out
