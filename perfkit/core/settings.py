"""Server settings by what they mean (a *role*: parallel requests, context length, KV-cache type …) and by the
names users write. A server kind registers the names it speaks for each role (:func:`register_names`); a study
asks for a role, never for a kind's spelling, and each kind turns roles into what its server takes (environment
variables, command-line flags). Values are validated here, before any server starts, with the name the user
wrote in every message.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from perfkit.core.errors import ConfigError

KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
_GO_DURATION = re.compile(r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


def parse_keep_alive_s(value: object) -> float:
    """A keep-alive → seconds (negative = forever). Accepts numbers and Go durations ("5m", "1h30m")."""
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


FLASH_MODES = {"1": "on", "true": "on", "0": "off", "false": "off", "": "auto", "auto": "auto"}


def _positive_int(v: str) -> int:
    n = int(v)
    if n < 1:
        raise ValueError
    return n


def _non_negative_int(v: str) -> int:
    n = int(v)
    if n < 0:
        raise ValueError
    return n


def _model_name(v: str) -> str:
    if not v.strip():
        raise ValueError
    return v


def _template_file(v: str) -> str:
    """``builtin:NAME`` (a template shipped with the server kind) or a file that exists on this host."""
    if re.fullmatch(r"builtin:[a-z0-9_-]+", v):
        return v
    if not Path(v).expanduser().is_file():
        raise ValueError
    return str(Path(v).expanduser().resolve())


def _budget(v: str) -> int:
    n = int(v)
    if n < -1:
        raise ValueError
    return n


def _one_of(*choices: str) -> Callable[[str], str]:
    def check(v: str) -> str:
        if v not in choices:
            raise ValueError
        return v
    return check


@dataclass(frozen=True)
class Role:
    """What a setting means, whichever server takes it: the values it allows (``allowed`` in words) and the check
    of a normalised value. ``lower``: values compare case-insensitively (``Auto`` is ``auto``)."""

    name: str
    allowed: str
    check: Callable[[str], object]
    lower: bool = False
    per_request: bool = False  # sent with every request (a thinking model's ``think``), not to the server


PARALLEL, CONTEXT_LENGTH, KV_CACHE_TYPE = "parallel", "context_length", "kv_cache_type"
FLASH_ATTENTION, KEEP_ALIVE, MAX_LOADED_MODELS = "flash_attention", "keep_alive", "max_loaded_models"
THREADS, BATCH, MMAP = "threads", "batch", "mmap"
DRAFT_MODEL, DRAFT_MAX, DRAFT_MIN = "draft_model", "draft_max", "draft_min"
THINK = "think"
CHAT_TEMPLATE = "chat_template"
THINK_BUDGET = "think_budget"

ROLES: dict[str, Role] = {r.name: r for r in [
    Role(FLASH_ATTENTION, "1, 0 or auto", _one_of(*FLASH_MODES), lower=True),
    Role(PARALLEL, "an integer ≥ 1", _positive_int),
    Role(KV_CACHE_TYPE, " | ".join(KV_CACHE_TYPES), _one_of(*KV_CACHE_TYPES)),
    Role(CONTEXT_LENGTH, "an integer ≥ 1 (tokens)", _positive_int),
    Role(KEEP_ALIVE, "seconds or a duration like '5m' (negative = forever)", parse_keep_alive_s),
    Role(MAX_LOADED_MODELS, "an integer ≥ 1", _positive_int),
    Role(THREADS, "an integer ≥ 1", _positive_int),
    Role(BATCH, "an integer ≥ 1", _positive_int),
    Role(MMAP, "true or false", _one_of("true", "false")),
    Role(DRAFT_MODEL, "a model of the server's store (or a file) to draft tokens for speculative decoding",
         _model_name),
    Role(DRAFT_MAX, "an integer ≥ 1 (tokens drafted per step)", _positive_int),
    Role(DRAFT_MIN, "an integer ≥ 0 (tokens drafted at least)", _non_negative_int),
    Role(CHAT_TEMPLATE, "builtin:agent (perfkit's, for the tiny demo models: tool calls and thinking) or a Jinja "
         "chat template file on this host", _template_file),
    Role(THINK_BUDGET, "an integer ≥ -1 (thinking tokens before the answer must start; -1: no limit, 0: none)",
         _budget),
    Role(THINK, "true, false, low, medium or high (whether a thinking model thinks, or how hard)",
         _one_of("true", "false", "low", "medium", "high"), lower=True, per_request=True),
]}


@dataclass(frozen=True)
class Name:
    """One name a server kind gives a role. ``server_env``: the server reads it from its environment (else it is
    a per-request option there, or a runner setting); ``canonical``: the spelling reports and stored settings use
    for the role (one per role, so two spellings of one setting never make two labels)."""

    name: str
    role: str
    server_env: bool = True
    canonical: bool = False


_NAMES: dict[str, Name] = {}
_CANONICAL: dict[str, str] = {}
_LOCK = threading.Lock()


def register_names(names: Iterable[Name]) -> None:
    """The names a server kind speaks (at its import); a name already given to another role is an error."""
    with _LOCK:
        for n in names:
            if n.role not in ROLES:
                raise ConfigError(f"setting name {n.name!r}: unknown role {n.role!r}; roles: {', '.join(ROLES)}")
            old = _NAMES.get(n.name)
            if old is not None and old.role != n.role:
                raise ConfigError(f"setting name {n.name!r} is registered for {old.role} and {n.role}")
            _NAMES[n.name] = n
            if n.canonical or n.role not in _CANONICAL:
                _CANONICAL[n.role] = n.name


def server_settings(settings: Mapping[str, object]) -> dict[str, str]:
    """The validated settings a server takes (what a restart applies), per-request options left out."""
    return {k: v for k, v in validate_settings(settings).items() if not ROLES[role_of(k)].per_request}


def request_options(settings: Mapping[str, object]) -> dict[str, str]:
    """The per-request options among ``settings``, by role (``{"think": "true"}``)."""
    return {role_of(k): v for k, v in validate_settings(settings).items() if ROLES[role_of(k)].per_request}


def think_of(settings: Mapping[str, object]) -> bool | str | None:
    """What ``settings`` ask a thinking model (``True``/``False``, a level), None when they don't say."""
    v = request_options(settings).get(THINK)
    return None if v is None else {"true": True, "false": False}.get(v, v)


def think_value(value: object) -> bool | str | None:
    """``value`` as a request's ``think`` (``True``/``False`` or a level), None for None; ValueError saying what is
    allowed (for a parameter section's validator, which names the key)."""
    if value is None:
        return None
    try:
        return think_of({THINK: value})
    except ConfigError:
        raise ValueError(f"{value!r} is not allowed; allowed: {ROLES[THINK].allowed}") from None


def names() -> list[str]:
    """Every setting name known, canonical ones first in role order."""
    canon = [_CANONICAL[r] for r in ROLES if r in _CANONICAL]
    return canon + sorted(n for n in _NAMES if n not in canon)


def role_of(name: str) -> str:
    """The role of a setting name; ConfigError for a name no kind speaks."""
    try:
        return _NAMES[name].role
    except KeyError:
        raise ConfigError(f"unknown setting {name!r}; allowed: {', '.join(names())}") from None


def name_of(role: str) -> str:
    """The canonical name of ``role`` (what a study writes when it sets one)."""
    try:
        return _CANONICAL[role]
    except KeyError:
        raise ConfigError(f"no server kind names the setting {role!r}") from None


def is_server_env(name: str) -> bool:
    """Whether the server reads ``name`` from its environment (else a per-request or runner option)."""
    return _NAMES[name].server_env


def _norm(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().lower() if not isinstance(value, str) else value.strip()


def validate_settings(settings: Mapping[str, object], where: str = "settings") -> dict[str, str]:
    """Check names and values; return them under their canonical names, values normalised to strings. Raises
    ConfigError naming the key as written."""
    out: dict[str, str] = {}
    for key, value in settings.items():
        if key not in _NAMES:
            raise ConfigError(f"{where}: unknown setting {key!r}; allowed: {', '.join(names())}")
        role = ROLES[_NAMES[key].role]
        v = _norm(value)
        if role.lower:
            v = v.lower()
        try:
            role.check(v)
        except (ValueError, TypeError):
            raise ConfigError(f"{where}: {key}={value!r} is not allowed; allowed: {role.allowed}") from None
        out[name_of(role.name)] = v
    return out


def by_role(settings: Mapping[str, object]) -> dict[str, str]:
    """Validated settings keyed by role."""
    return {role_of(k): v for k, v in validate_settings(settings).items()}


def value_of(settings: Mapping[str, object], role: str) -> str | None:
    """The (normalised) value ``settings`` give ``role``, None when they don't set it."""
    return by_role(settings).get(role)


def settings_label(setting: Mapping[str, object]) -> str:
    """A setting as a report names it: 'FLASH_ATTENTION=1, NUM_PARALLEL=4', 'defaults' when empty. A name's
    leading vendor prefix (up to its first ``_``, when upper case) is left out."""
    return ", ".join(f"{short_name(k)}={v}" for k, v in validate_settings(setting).items()) or "defaults"


def most_alike(label: str, others: Iterable[str]) -> str | None:
    """Among setting labels (:func:`settings_label`), the one sharing the most settings with ``label`` (the first on
    a tie): what the same server did without the one change a comparison is about."""
    mine = set(label.split(", "))
    return max(others, key=lambda o: len(mine & set(o.split(", "))), default=None)


def short_name(name: str) -> str:
    """A setting's name as a report shows it (its upper-case vendor prefix left out of an environment name)."""
    head, _, rest = name.partition("_")
    return rest if rest and head.isupper() and _NAMES[name].server_env else name


def known_conflicts(settings: Mapping[str, object]) -> list[str]:
    """Settings the engine is known to refuse together, in words (a server that failed to start with them is
    explained by these); [] when none is known."""
    s = {role_of(k): _norm(v).lower() for k, v in settings.items() if k in _NAMES}
    out = []
    if s.get(KV_CACHE_TYPE, "f16") != "f16" and s.get(FLASH_ATTENTION) in ("0", "false", "off"):
        out.append("a quantized KV cache needs flash attention (the engine refuses it otherwise)")
    return out


# A request option, not any server's setting: named here, where every kind understands it.
register_names([Name("think", THINK, server_env=False, canonical=True)])
