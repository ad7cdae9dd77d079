"""Parameter sets (YAML), validated before anything runs.

An unknown key, a wrong type, an unknown model, cache state or setting: one ``ConfigError`` that
names the file, the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .coldstart import WARMUP_STRATEGIES
from .errors import ConfigError
from .records import CACHE_STATES
from .settings import validate_settings

STUDIES = ("cold_start", "model_size", "quantization", "config_tuning")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _members(values: list[str], allowed: tuple[str, ...], what: str) -> list[str]:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {bad[0]!r}; allowed: {', '.join(allowed)}")
    return values


def _settings(v: dict[str, Any]) -> dict[str, Any]:
    try:
        validate_settings(v)
    except ConfigError as e:
        raise ValueError(str(e).removeprefix("settings: ")) from None
    return v


class BackendParams(_Strict):
    kind: Literal["embedded", "ollama", "llama-server"] = "embedded"
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, description="sent to the server, never recorded")
    settings: dict[str, Any] = Field(default_factory=dict, description="base server settings (Ollama names)")
    restart_command: list[str] | None = Field(
        None, description="argument list that restarts an Ollama server; settings are passed in its environment")
    ready_timeout_s: float = Field(120.0, gt=0)
    models_dir: str | None = None

    @field_validator("settings")
    @classmethod
    def _check_settings(cls, v):
        return _settings(v)

    @model_validator(mode="after")
    def _url(self):
        if self.kind != "embedded" and not self.url:
            raise ValueError(f"backend kind {self.kind!r} needs a url")
        return self


class Timeouts(_Strict):
    request_s: float = Field(1800.0, gt=0, description="whole request; a cold 72B load takes minutes")
    stall_s: float | None = Field(None, gt=0, description="silence inside a stream")


class SamplingParams(_Strict):
    interval_s: float = Field(0.1, gt=0)
    gpu: bool = True
    system: bool = True
    idle_baseline_s: float = Field(0.0, ge=0)


class ColdStart(_Strict):
    model: str
    states: list[str] = Field(default_factory=lambda: ["cold_disk", "cold_memory", "warm"])
    reps: int = Field(5, ge=1)
    num_predict: int = Field(32, ge=1)
    prompt_words: int = Field(48, ge=4)
    strategies: list[str] = Field(default_factory=lambda: list(WARMUP_STRATEGIES))
    strategy_reps: int = Field(2, ge=1)
    keep_alive_s: float = Field(300.0, gt=0, description="server keep-alive during the strategy runs")
    idle_gaps_s: list[float] = Field(default_factory=lambda: [1.0])
    keep_warm_interval_s: float | None = Field(None, gt=0)

    @field_validator("states")
    @classmethod
    def _states(cls, v):
        return _members(v, CACHE_STATES, "cache state")

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v):
        return _members(v, WARMUP_STRATEGIES, "warmup strategy")


class ModelSize(_Strict):
    models: list[str] = Field(min_length=2)
    reps: int = Field(5, ge=1)
    cold_reps: int = Field(3, ge=1)
    num_predict: int = Field(64, ge=2)
    prompt_words: int = Field(96, ge=4)


class Quantization(_Strict):
    models: list[str] = Field(min_length=2)
    reference: str | None = Field(None, description="highest-precision variant; default: the first")
    reps: int = Field(4, ge=1)
    drift_prompts: int = Field(4, ge=1)
    num_predict: int = Field(48, ge=2)
    prompt_words: int = Field(64, ge=4)

    @model_validator(mode="after")
    def _ref(self):
        if self.reference is not None and self.reference not in self.models:
            raise ValueError(f"reference {self.reference!r} must be one of models: {', '.join(self.models)}")
        return self


class ConfigTuning(_Strict):
    model: str
    settings: list[dict[str, Any]] = Field(min_length=1, description="one server configuration per entry")
    concurrency: list[int] = Field(default_factory=lambda: [1, 4])
    requests: int = Field(8, ge=1)
    num_predict: int = Field(32, ge=2)
    prompt_words: int = Field(48, ge=4)

    @field_validator("settings")
    @classmethod
    def _grid(cls, v):
        for i, s in enumerate(v):
            try:
                validate_settings(s)
            except ConfigError as e:
                raise ValueError(f"entry {i}: {str(e).removeprefix('settings: ')}") from None
        return v

    @field_validator("concurrency")
    @classmethod
    def _conc(cls, v):
        if not v or any(c < 1 for c in v):
            raise ValueError("a list of integers ≥ 1")
        return v


class Studies(_Strict):
    cold_start: ColdStart | None = None
    model_size: ModelSize | None = None
    quantization: Quantization | None = None
    config_tuning: ConfigTuning | None = None


class Params(_Strict):
    name: str
    description: str = ""
    backend: BackendParams = Field(default_factory=BackendParams)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    seed: int = 0
    progress: bool = False
    studies: Studies

    def enabled(self) -> list[str]:
        return [s for s in STUDIES if getattr(self.studies, s) is not None]

    def models_used(self) -> list[tuple[str, str]]:
        """(key path, model) for every model named anywhere."""
        out = []
        s = self.studies
        if s.cold_start:
            out.append(("studies.cold_start.model", s.cold_start.model))
        for key in ("model_size", "quantization"):
            st = getattr(s, key)
            if st:
                out += [(f"studies.{key}.models[{i}]", m) for i, m in enumerate(st.models)]
        if s.config_tuning:
            out.append(("studies.config_tuning.model", s.config_tuning.model))
        return out


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
    return ", ".join(cls.model_fields)


def load(path: str | Path, *, check_models: bool = True) -> Params:
    """Read and validate a parameter file; ConfigError names the file, the key and what is allowed."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such parameter file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level (keys: {', '.join(Params.model_fields)})")
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        # An unknown key explains a "missing" one better than the other way round: report it first.
        err = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")[0]
        key = _loc(err["loc"])
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{path}: unknown key {key!r}; allowed here: {_allowed(Params, err['loc'])}") from None
        msg = err["msg"].removeprefix("Value error, ")
        got = repr(err.get("input"))
        raise ConfigError(f"{path}: {key}: {msg} (got {got[:80] + '…' if len(got) > 80 else got})") from None
    if check_models and params.backend.kind == "embedded":
        from .models import models_dir

        store = Path(params.backend.models_dir).expanduser() if params.backend.models_dir else models_dir()
        have = sorted(p.stem for p in store.glob("*.gguf"))
        for key, model in params.models_used():
            if model not in have:
                raise ConfigError(f"{path}: {key}: unknown model {model!r}; allowed: "
                                  f"{', '.join(have) or 'none yet (run `perfkit models prepare`)'}")
    return params
