"""Parameter sets (YAML), validated before anything runs.

An unknown key, a wrong type, an unknown model, cache state or setting: one ``ConfigError`` that
names the file, the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from perfkit.measure.cache_states import WARMUP_STRATEGIES
from perfkit.core.errors import ConfigError
from perfkit.core.records import CACHE_STATES
from perfkit.core.settings import validate_settings

STUDIES = ("cold_start", "model_size", "quantization", "config_tuning", "fleet")
# Upper bounds: past these a run would not end in a useful time (and a typo such as 1e9 would run forever).
MAX_REPS = 10_000
MAX_REQUESTS = 100_000
MAX_CONCURRENCY = 1024
MAX_TOKENS = 131_072
MAX_PROMPT_WORDS = 100_000
MAX_GAP_S = 86_400.0
NAME_RULE = "letters, digits, '-', '_' and '.', starting with a letter or digit, at most 64 characters"


def _unique(values: list, what: str) -> list:
    seen = set()
    for v in values:
        key = repr(v)
        if key in seen:
            raise ValueError(f"{what} {v!r} is listed twice; each may appear once")
        seen.add(key)
    return values


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v, info):
        # YAML's yes/no/true/false would silently become 1/0 in a number field (`reps: yes` → 1 rep).
        if isinstance(v, bool) and info.field_name in cls.model_fields:
            ann = cls.model_fields[info.field_name].annotation
            kinds = set(getattr(ann, "__args__", ())) or {ann}
            if bool not in kinds and kinds & {int, float}:
                raise ValueError(f"a number, not {str(v).lower()}")
        return v


def _concurrency(v: list[int]) -> list[int]:
    if not v or any(not 1 <= c <= MAX_CONCURRENCY for c in v):
        raise ValueError(f"a non-empty list of integers 1 ≤ clients ≤ {MAX_CONCURRENCY}")
    return _unique(v, "concurrency")


def _http_url(v: str, trailing_slash: bool = False) -> str:
    from urllib.parse import urlsplit

    u = urlsplit(v.strip())
    try:
        ok = u.scheme in ("http", "https") and bool(u.hostname) and (u.port is None or 0 < u.port < 65536)
    except ValueError:  # a port that is not a number
        ok = False
    if not ok:
        raise ValueError("expected an http:// or https:// URL with a host (and optional port), "
                         "e.g. http://127.0.0.1:11434")
    return v.strip() if trailing_slash else v.strip().rstrip("/")


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


class ServerLog(_Strict):
    """Where the server writes its log: a file, or a command that prints it (journalctl, docker logs)."""

    file: str | None = None
    command: list[str] | None = None

    @model_validator(mode="after")
    def _one(self):
        if bool(self.file) == bool(self.command):
            raise ValueError("give exactly one of file (a path) or command (an argument list, e.g. "
                             "[journalctl, -u, ollama, --no-pager, -o, short-iso])")
        return self


class BackendParams(_Strict):
    kind: Literal["embedded", "ollama", "llama-server", "openai"] = "embedded"
    url: str | None = None
    endpoint: Literal["chat", "completions"] = Field(
        "chat", description="openai only: /v1/chat/completions (chat) or /v1/completions")
    headers: dict[str, str] = Field(default_factory=dict, description="sent to the server, never recorded")
    settings: dict[str, Any] = Field(default_factory=dict, description="base server settings (Ollama names)")
    restart_command: list[str] | None = Field(
        None, description="argument list that restarts an Ollama server; settings are passed in its environment")
    ready_timeout_s: float = Field(120.0, gt=0)
    models_dir: str | None = None
    server_log: ServerLog | None = Field(None, description="the server's own log (Ollama), read for the span of the run")

    @field_validator("settings")
    @classmethod
    def _check_settings(cls, v):
        return _settings(v)

    @field_validator("url")
    @classmethod
    def _url_form(cls, v):
        if v is None:
            return v
        return _http_url(v, trailing_slash=True)

    @model_validator(mode="after")
    def _url(self):
        if self.kind != "embedded" and not self.url:
            raise ValueError(f"backend kind {self.kind!r} needs a url")
        if self.kind == "embedded" and self.url:
            raise ValueError("url is used only with kind ollama, llama-server or openai (the embedded engine picks "
                             "its own port): remove it or set kind")
        if self.endpoint != "chat" and self.kind != "openai":
            raise ValueError("endpoint is used only with kind openai")
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
    states: list[str] = Field(default_factory=lambda: ["cold_disk", "cold_memory", "warm"], min_length=1)
    reps: int = Field(5, ge=1, le=MAX_REPS)
    num_predict: int = Field(32, ge=1, le=MAX_TOKENS)
    prompt_words: int = Field(48, ge=4, le=MAX_PROMPT_WORDS)
    strategies: list[str] = Field(default_factory=lambda: list(WARMUP_STRATEGIES))
    strategy_reps: int = Field(2, ge=1, le=MAX_REPS)
    keep_alive_s: float = Field(300.0, gt=0, description="server keep-alive during the strategy runs")
    idle_gaps_s: list[float] = Field(default_factory=lambda: [1.0])
    keep_warm_interval_s: float | None = Field(None, gt=0)
    scheme_a_delays_s: list[float] = Field(default_factory=list, description=(
        "scheme A (restart, preload at start): a user request arrives this long after the restart; "
        "empty: not measured"))
    scheme_a_reps: int = Field(2, ge=1, le=MAX_REPS)

    @field_validator("scheme_a_delays_s")
    @classmethod
    def _scheme_a(cls, v):
        if any(not 0 <= d <= MAX_GAP_S for d in v):
            raise ValueError(f"a list of delays in seconds after the restart, each 0 ≤ delay ≤ {MAX_GAP_S:g}")
        return _unique(v, "scheme A delay")

    @field_validator("states")
    @classmethod
    def _states(cls, v):
        return _unique(_members(v, CACHE_STATES, "cache state"), "cache state")

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v):
        return _unique(_members(v, WARMUP_STRATEGIES, "warmup strategy"), "warmup strategy")

    @field_validator("idle_gaps_s")
    @classmethod
    def _gaps(cls, v):
        if not v or any(not 0 <= g <= MAX_GAP_S for g in v):
            raise ValueError(f"a non-empty list of idle gaps in seconds, each 0 ≤ gap ≤ {MAX_GAP_S:g}")
        return _unique(v, "idle gap")


class ModelSize(_Strict):
    models: list[str] = Field(min_length=2)
    reps: int = Field(5, ge=1, le=MAX_REPS)
    cold_reps: int = Field(3, ge=1, le=MAX_REPS)
    num_predict: int = Field(64, ge=2, le=MAX_TOKENS)
    prompt_words: int = Field(96, ge=4, le=MAX_PROMPT_WORDS)

    @field_validator("models")
    @classmethod
    def _models(cls, v):
        return _unique(v, "model")


class Quantization(_Strict):
    models: list[str] = Field(min_length=2)
    reference: str | None = Field(None, description="highest-precision variant; default: the first")
    reps: int = Field(4, ge=1, le=MAX_REPS)
    drift_prompts: int = Field(4, ge=1, le=MAX_REPS)
    num_predict: int = Field(48, ge=2, le=MAX_TOKENS)
    prompt_words: int = Field(64, ge=4, le=MAX_PROMPT_WORDS)

    @field_validator("models")
    @classmethod
    def _models(cls, v):
        return _unique(v, "model")

    @model_validator(mode="after")
    def _ref(self):
        if self.reference is not None and self.reference not in self.models:
            raise ValueError(f"reference {self.reference!r} must be one of models: {', '.join(self.models)}")
        return self


class Slo(_Strict):
    """Service-level objectives a request must meet to count towards goodput."""

    ttft_s: float | None = Field(2.0, gt=0)
    tpot_s: float | None = Field(0.1, gt=0)
    e2e_s: float | None = Field(None, gt=0)


class ConfigTuning(_Strict):
    model: str
    slo: Slo = Field(default_factory=Slo)
    settings: list[dict[str, Any]] = Field(min_length=1, description="one server configuration per entry")
    concurrency: list[int] = Field(default_factory=lambda: [1, 4])
    requests: int = Field(8, ge=1, le=MAX_REQUESTS)
    rates_rps: list[float] = Field(default_factory=list, description="open-loop request rates to sweep (goodput vs rate)")
    rate_requests: int = Field(12, ge=2, le=MAX_REQUESTS, description="requests per open-loop rate")
    arrivals: Literal["poisson", "constant"] = "poisson"
    num_predict: int = Field(32, ge=2, le=MAX_TOKENS)
    prompt_words: int = Field(48, ge=4, le=MAX_PROMPT_WORDS)

    @field_validator("rates_rps")
    @classmethod
    def _rates(cls, v):
        if any(not 0 < r <= 10_000 for r in v):
            raise ValueError("request rates must be > 0 and ≤ 10000 per second")
        return _unique(v, "rate")

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
        return _concurrency(v)




class FleetProxy(_Strict):
    """The proxy perfkit runs (nginx); the seed guide's values are the defaults."""

    read_timeout_s: float = Field(900.0, gt=0, le=MAX_GAP_S, description="proxy_read_timeout")
    buffering: bool = Field(False, description="proxy_buffering (off: streamed tokens pass as they come)")
    keepalive: int = Field(32, ge=0, le=1024, description="idle upstream connections kept per worker")
    max_fails: int = Field(1, ge=0, le=100)
    fail_timeout_s: int = Field(10, ge=1, le=3600)


class Fleet(_Strict):
    """Several servers behind a load balancer. Embedded backend: perfkit starts ``servers`` engines and
    nginx; any other backend: give ``proxy_url`` and ``server_urls`` and perfkit starts nothing."""

    model: str
    servers: int = Field(2, ge=1, le=16, description="embedded: engines to start")
    weights: list[int] | None = Field(None, description="one per server (default: equal)")
    proxy_url: str | None = None
    server_urls: list[str] = Field(default_factory=list)
    api: Literal["openai", "ollama"] = Field("openai", description="the servers' API: OpenAI /v1 or Ollama's own")
    proxy: FleetProxy = Field(default_factory=FleetProxy)
    concurrency: list[int] = Field(default_factory=lambda: [1, 2, 4])
    requests: int = Field(12, ge=2, le=MAX_REQUESTS)
    num_predict: int = Field(16, ge=2, le=MAX_TOKENS)
    prompt_words: int = Field(32, ge=4, le=MAX_PROMPT_WORDS)
    overhead_reps: int = Field(10, ge=2, le=MAX_REPS, description="direct/proxy request pairs per buffering mode")
    cold_reps: int = Field(3, ge=1, le=MAX_REPS, description="cold starts measured for the timeout advice")
    failover_requests: int = Field(16, ge=4, le=MAX_REQUESTS)
    failover_kill_after: int = Field(4, ge=1, le=MAX_REQUESTS, description="kill a server after this many responses")
    short_timeout_s: float | None = Field(None, gt=0, description="the proxy timeout that must produce a 504 "
                                          "(default: half the shortest measured cold start)")
    cache_reps: int = Field(4, ge=2, le=MAX_REPS)
    stale_model: str | None = Field(None, description="embedded: the model the served name is switched to, "
                                    "to show a cached answer outliving a model change")

    @field_validator("concurrency")
    @classmethod
    def _conc(cls, v):
        return _concurrency(v)

    @field_validator("server_urls")
    @classmethod
    def _urls(cls, v):
        return _unique([_http_url(u) for u in v], "server url")

    @field_validator("proxy_url")
    @classmethod
    def _purl(cls, v):
        return None if v is None else _http_url(v)

    @model_validator(mode="after")
    def _shape(self):
        if bool(self.proxy_url) != bool(self.server_urls):
            raise ValueError("give both proxy_url and server_urls (a user's own fleet), or neither (embedded)")
        n = len(self.server_urls) or self.servers
        if self.weights is not None and (len(self.weights) != n or any(w < 1 for w in self.weights)):
            raise ValueError(f"weights: one integer ≥ 1 per server ({n}), got {self.weights}")
        if self.failover_kill_after >= self.failover_requests:
            raise ValueError("failover_kill_after must be less than failover_requests")
        return self

    def weight_list(self) -> list[int]:
        return self.weights or [1] * (len(self.server_urls) or self.servers)


class Studies(_Strict):
    cold_start: ColdStart | None = None
    model_size: ModelSize | None = None
    quantization: Quantization | None = None
    config_tuning: ConfigTuning | None = None
    fleet: Fleet | None = None

    @model_validator(mode="after")
    def _some(self):
        if not any(getattr(self, s) is not None for s in STUDIES):
            raise ValueError(f"no study enabled; set at least one of: {', '.join(STUDIES)}")
        return self


class Params(_Strict):
    name: str
    description: str = ""
    backend: BackendParams = Field(default_factory=BackendParams)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    seed: int = 0
    progress: bool = False
    studies: Studies

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        import re

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", v):
            raise ValueError(f"the name becomes part of the run directory's name: use {NAME_RULE}")
        return v

    @model_validator(mode="after")
    def _fleet_needs_urls(self):
        f = self.studies.fleet
        if f is not None and self.backend.kind != "embedded" and not f.server_urls:
            raise ValueError("studies.fleet: with a server of your own (backend kind "
                             f"{self.backend.kind!r}) give fleet.proxy_url and fleet.server_urls; perfkit starts "
                             "engines and nginx only for the embedded backend")
        return self

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
        if s.fleet and not s.fleet.server_urls:  # a user's fleet serves its own names
            out.append(("studies.fleet.model", s.fleet.model))
            if s.fleet.stale_model:
                out.append(("studies.fleet.stale_model", s.fleet.stale_model))
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""


def _mapping_unique(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            dup = key in seen
        except TypeError:  # an unhashable key: construct_mapping says so
            break
        if dup:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (each key may appear once)",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_unique)
MAX_FILE_BYTES = 1 << 20


def read_yaml(path: str | Path) -> Any:
    """The parsed YAML of a parameter file; ConfigError if it is missing, not a text file, or not YAML."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such parameter file")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a parameter file (give a .yaml file, e.g. params/demo.yaml)")
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file; give a YAML parameter file")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes is too large for a parameter file "
                              f"(at most {MAX_FILE_BYTES} bytes of YAML)")
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the parameter file: {e.strerror}") from None
    if b"\0" in data:
        raise ConfigError(f"{path}: a binary file, not a YAML parameter file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}): a parameter file is YAML text") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def load(path: str | Path, *, check_models: bool = True) -> Params:
    """Read and validate a parameter file; ConfigError names the file, the key and what is allowed."""
    path = Path(path)
    raw = read_yaml(path)
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
        if not key:  # a check across sections: its message names the keys, the input is the whole file
            raise ConfigError(f"{path}: {msg}") from None
        got = repr(err.get("input"))
        raise ConfigError(f"{path}: {key}: {msg} (got {got[:80] + '…' if len(got) > 80 else got})") from None
    if check_models and params.backend.kind == "embedded":
        from perfkit.servers.models import models_dir

        store = Path(params.backend.models_dir).expanduser() if params.backend.models_dir else models_dir()
        have = sorted(p.stem for p in store.glob("*.gguf"))
        for key, model in params.models_used():
            if model not in have:
                raise ConfigError(f"{path}: {key}: unknown model {model!r}; allowed: "
                                  f"{', '.join(have) or 'none yet (run `perfkit models prepare`)'}")
    return params
