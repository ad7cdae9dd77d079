"""Parameter sets (YAML), validated before anything runs.

The file's shape: ``name``, ``description``, ``backend``, ``timeouts``, ``sampling``, ``telemetry``, ``cluster``, ``seed``, ``progress``,
``repeat`` and ``studies``, whose sections are the registered studies' own parameter models (each defined
next to its study). An unknown key, a wrong type, an unknown model, cache state or setting: one
``ConfigError`` that names the file, the key and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from perfkit import kinds
from perfkit.core.errors import ConfigError
from perfkit.core.secrets import SECRET_KEY, redact_text
from perfkit.core.schema import (NAME_RULE, BackendParams, ClusterParams, SamplingParams, Strict, TelemetryParams,
                                 Timeouts)
from perfkit.core.yamlfile import line_of, parse, read_text, source_name
from perfkit.studies import registry

MAX_REPEAT = 100


class _Base(Strict):
    name: str
    description: str = ""
    backend: BackendParams = Field(default_factory=BackendParams)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    telemetry: TelemetryParams = Field(default_factory=TelemetryParams)
    cluster: ClusterParams | None = Field(None, description="a Ray cluster: agents on server hosts, load from client "
                                          "nodes (absent: everything from this machine, Ray not started)")
    seed: int = 0
    progress: bool = False
    repeat: int = Field(1, ge=1, le=MAX_REPEAT, description="replicates of each study in one run (runs are the "
                                                           "unit of a comparison at ≥ 3)")

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", v):
            raise ValueError(f"the name becomes part of the run directory's name: use {NAME_RULE}")
        return v

    @model_validator(mode="after")
    def _cluster_for_host(self):
        if self.backend.host is not None and self.cluster is None:
            raise ValueError(f"backend.host: the server on {self.backend.host} is seen through perfkit's agent there: "
                             "add a cluster: section (address: auto, HOST:PORT or ray://HOST:PORT)")
        return self

    def enabled(self) -> list[str]:
        """The studies this file sets, in the order a run measures them."""
        return [s for s in registry.names() if getattr(self.studies, s, None) is not None]

    def models_used(self) -> list[tuple[str, str]]:
        """(key path, model) for every model named anywhere."""
        return [(f"studies.{s}.{key}", model) for s in self.enabled()
                for key, model in registry.get(s).models_used(getattr(self.studies, s))]


_MODELS: dict[tuple[int, int], type[BaseModel]] = {}


def _kind_rules(self):
    problems = kinds.get(self.kind).check_section(self)
    if problems:
        raise ValueError("; ".join(problems))
    return self


def backend_model() -> type[BaseModel]:
    """The backend section whose ``kind`` is one of the registered server kinds, checked by that kind's rules."""
    return create_model("BackendParams", __base__=BackendParams,
                        __validators__={"_kind_rules": model_validator(mode="after")(_kind_rules)},
                        kind=(Literal[tuple(kinds.names())], "embedded"))


def params_model() -> type[BaseModel]:
    """The parameter model with one optional section per registered study, its backend section one of the
    registered kinds (rebuilt when a study or a kind registers)."""
    v = (registry.version(), kinds.KINDS.version)
    if v not in _MODELS:
        names = registry.names()
        fields = {n: (Optional[registry.get(n).Params], None) for n in names}

        def _some(self):
            if not any(getattr(self, s) is not None for s in names):
                raise ValueError(f"no study enabled; set at least one of: {', '.join(names)}")
            return self

        studies = create_model("Studies", __base__=Strict, __validators__={"_some": model_validator(mode="after")(_some)},
                               **fields)
        _MODELS.clear()
        backend = backend_model()
        _MODELS[v] = create_model("Params", __base__=_Base, studies=(studies, ...),
                                  backend=(backend, Field(default_factory=backend)))
    return _MODELS[v]


def __getattr__(name: str) -> Any:
    if name == "Params":  # the model depends on the registered studies: built on first use
        return params_model()
    raise AttributeError(name)


def study_names() -> list[str]:
    return registry.names()


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _allowed(model_cls: type[BaseModel], loc: tuple) -> str:
    cls = model_cls
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        f = cls.model_fields.get(part)
        ann = getattr(f, "annotation", None)
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return ""
        cls = inner[0]
    # The section's own keys first, then those it inherits (a study's `reps` before the shared `budget_s`).
    own = [k for k in getattr(cls, "__annotations__", {}) if k in cls.model_fields] \
        if getattr(cls, "shared_keys_last", False) else []
    return ", ".join(own + [k for k in cls.model_fields if k not in own])


def validate(raw: Any, where: str = "parameters", *, line: Callable[[tuple], int | None] | None = None,
             only: list[str] | None = None) -> Any:
    """Validate already-parsed parameters; ConfigError names ``where`` and, for every problem at once, the key,
    its line (``line(loc)``, where known) and what is allowed. ``only``: the studies to be run — the other
    studies' sections are not validated (a typo there does not stop a run that does not use them)."""
    model = params_model()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level (keys: {', '.join(model.model_fields)})")
    if only and isinstance(raw.get("studies"), dict) and any(k in only for k in raw["studies"]):
        raw = {**raw, "studies": {k: v for k, v in raw["studies"].items() if k in only or k not in registry.names()}}
    try:
        params = model.model_validate(raw)
    except ValidationError as e:
        # An unknown key explains a "missing" one better than the other way round: unknown keys first.
        errors = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")
        # A key missing where an unknown one stands is most likely that key misspelt: said once, as the unknown.
        typo_in = {tuple(x["loc"][:-1]) for x in errors if x["type"] == "extra_forbidden"}
        errors = [x for x in errors if not (x["type"] == "missing" and tuple(x["loc"][:-1]) in typo_in)]
        problems = list(dict.fromkeys(_problem(model, err, line) for err in errors))
        if len(problems) == 1:
            raise ConfigError(f"{where}: {problems[0]}") from None
        raise ConfigError(f"{where}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)) from None
    for name in params.enabled():
        try:
            registry.get(name).check_params(params)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    return params


def _problem(model: type[BaseModel], err: dict, line: Callable[[tuple], int | None] | None) -> str:
    """One validation error as a user reads it: the key, what is wrong or allowed, the input, then its line."""
    key = _loc(err["loc"])
    n = line(tuple(err["loc"])) if line is not None and err["loc"] else None
    at = f" (line {n})" if n else ""
    if err["type"] == "extra_forbidden":
        return f"unknown key {key!r}; allowed here: {_allowed(model, err['loc'])}{at}"
    msg = err["msg"].removeprefix("Value error, ")
    if not key:  # a check across sections: its message names the keys, the input is the whole file
        return msg
    if any(isinstance(part, str) and SECRET_KEY.search(part) for part in err["loc"]):
        return f"{key}: {msg}{at}"  # a secret's value is never echoed
    return f"{key}: {msg} (got {redact_text(_short(err.get('input')))}){at}"


def _short(v: Any, limit: int = 80) -> str:
    """A short, safe rendering of an input value for an error message (never the whole of a huge input)."""
    if isinstance(v, (dict, list, tuple)):
        return f"a {type(v).__name__} of {len(v)} item{'s' if len(v) != 1 else ''}"
    text = repr(v) if not isinstance(v, str) else repr(v[:limit + 1])
    return text[:limit] + "…" if len(text) > limit else text


def load(path: str | Path, *, check_models: bool = True, only: list[str] | None = None) -> Any:
    """Read and validate a parameter file (``-``: standard input); ConfigError names the file and, for every
    problem, the key, its line and what is allowed. ``only``: the studies to be run (the others' sections are
    not validated)."""
    where = source_name(path)
    text = read_text(path)
    params = validate(parse(text, where), where, line=lambda loc: line_of(text, loc), only=only)
    if check_models:
        kinds.get(params.backend.kind).check_models(params.backend, params.models_used(), where)
    return params
