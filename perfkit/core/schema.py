"""The typed schemas every layer shares: the parameter building blocks (a strict base that refuses unknown
keys and YAML booleans in number fields, URL/list validators, limits) and the sections that are not a
study's own: the backend, timeouts, sampling and SLOs. A study's own section sits next to the study."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from perfkit.core.clock import parse_tz
from perfkit.core.errors import ConfigError
from perfkit.core.settings import validate_settings

# Upper bounds: past these a run would not end in a useful time (and a typo such as 1e9 would run forever).
MAX_REPS = 10_000
MAX_REQUESTS = 100_000
MAX_CONCURRENCY = 1024
MAX_TOKENS = 131_072
MAX_PROMPT_WORDS = 100_000
MAX_GAP_S = 86_400.0
NAME_RULE = "letters, digits, '-', '_' and '.', starting with a letter or digit, at most 64 characters"


def unique(values: list, what: str) -> list:
    seen = set()
    for v in values:
        key = repr(v)
        if key in seen:
            raise ValueError(f"{what} {v!r} is listed twice; each may appear once")
        seen.add(key)
    return values


class Strict(BaseModel):
    # inf and nan are refused everywhere: `request_s: .inf` would overflow a timer deep inside a run.
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

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


def concurrency_list(v: list[int]) -> list[int]:
    if not v or any(not 1 <= c <= MAX_CONCURRENCY for c in v):
        raise ValueError(f"a non-empty list of integers 1 ≤ clients ≤ {MAX_CONCURRENCY}")
    return unique(v, "concurrency")


def http_url(v: str, trailing_slash: bool = False) -> str:
    u = urlsplit(v.strip())
    try:
        ok = u.scheme in ("http", "https") and bool(u.hostname) and (u.port is None or 0 < u.port < 65536)
    except ValueError:  # a port that is not a number
        ok = False
    if not ok:
        raise ValueError("expected an http:// or https:// URL with a host (and optional port), "
                         "e.g. http://127.0.0.1:11434")
    return v.strip() if trailing_slash else v.strip().rstrip("/")


def members(values: list[str], allowed: tuple[str, ...], what: str) -> list[str]:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {bad[0]!r}; allowed: {', '.join(allowed)}")
    return values


def settings_dict(v: dict[str, Any]) -> dict[str, Any]:
    try:
        validate_settings(v)
    except ConfigError as e:
        raise ValueError(str(e).removeprefix("settings: ")) from None
    return v


def settings_list(v: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A grid of server settings (one dict per point), each checked; an error names its entry. Two entries that
    mean the same settings once normalised (``2`` and ``"2"``, ``true`` and ``1``) are refused: their figures
    would share one label and overwrite each other."""
    seen: dict[tuple, int] = {}
    for i, s in enumerate(v):
        try:
            norm = tuple(sorted(validate_settings(s).items()))
        except ConfigError as e:
            raise ValueError(f"entry {i}: {str(e).removeprefix('settings: ')}") from None
        if norm in seen:
            raise ValueError(f"entries {seen[norm]} and {i} are the same settings "
                             f"({', '.join(f'{k}={x}' for k, x in norm) or 'the defaults'}); each entry must differ")
        seen[norm] = i
    return v


class ServerLog(Strict):
    """Where the server writes its log: a file, or a command that prints it (journalctl, docker logs)."""

    file: str | None = None
    command: list[str] | None = None
    tz: str | None = Field(None, description="the zone of log times written without one (GIN, Go log lines): UTC, "
                                             "an IANA name or +HH:MM; absent: detected from the log itself")

    @field_validator("tz")
    @classmethod
    def _tz(cls, v):
        if v is not None:
            parse_tz(v)
        return v

    @model_validator(mode="after")
    def _one(self):
        if bool(self.file) == bool(self.command):
            raise ValueError("give exactly one of file (a path) or command (an argument list, e.g. "
                             "[journalctl, -u, SERVICE, --no-pager, -o, short-iso])")
        return self


class BackendParams(Strict):
    """The backend section as every server kind has it. The kind a file names checks the rest (its own keys, a url
    it needs): the parameter model perfkit validates with is this one with those rules (``perfkit.studies.params``).
    """

    kind: str = "embedded"
    url: str | None = None
    endpoint: Literal["chat", "completions"] = Field(
        "chat", description="/v1/chat/completions (chat) or /v1/completions, where the kind's API has both")
    headers: dict[str, str] = Field(default_factory=dict, description="sent to the server, never recorded")
    settings: dict[str, Any] = Field(default_factory=dict, description="base server settings (by the names of "
                                                                        "`perfkit settings`)")
    restart_command: list[str] | None = Field(
        None, description="argument list that restarts the server; settings are passed in its environment")
    ready_timeout_s: float = Field(120.0, gt=0)
    models_dir: str | None = None
    server_log: ServerLog | None = Field(None, description="the server's own log, read for the span of the run")
    host: str | None = Field(None, description="the server runs on this cluster node (it joined as perfkit-host:NAME): "
                             "perfkit's agent there sees its processes, settings, files and log (needs cluster:); "
                             "restart_command and server_log are then that host's")

    @field_validator("settings")
    @classmethod
    def _check_settings(cls, v):
        return settings_dict(v)

    @field_validator("headers")
    @classmethod
    def _headers(cls, v):
        for k, val in v.items():
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", k):
                raise ValueError(f"header name {k[:40]!r} is not a valid HTTP header name")
            if any(ord(c) > 126 or (ord(c) < 32 and c != "\t") for c in val):
                # HTTP carries header values as ASCII; a non-ASCII or control character fails every request.
                raise ValueError(f"the value of header {k!r} has a non-ASCII or control character; "
                                 "HTTP header values are ASCII")
        return v

    @field_validator("url")
    @classmethod
    def _url_form(cls, v):
        if v is None:
            return v
        return http_url(v, trailing_slash=True)

    @field_validator("host")
    @classmethod
    def _host(cls, v):
        return host_name(v) if v is not None else v


HOST_NAME_RULE = "letters, digits, '-', '_' and '.', at most 64 characters"


def host_name(v: str) -> str:
    """A Ray node's perfkit name (the ``perfkit-host:NAME`` / ``perfkit-client:NAME`` resource it joined with)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", v):
        raise ValueError(f"{v[:70]!r} is not a node name: use {HOST_NAME_RULE}")
    return v


class ClusterParams(Strict):
    """A Ray cluster whose nodes carry perfkit's agents (one per server host) and request engines (client nodes).

    Without this section nothing is distributed and Ray is not started."""

    address: str = Field("auto", description="auto (the cluster this machine joined), HOST:PORT (the head's GCS) or "
                                             "ray://HOST:PORT (Ray Client)")
    clients: int | list[str] = Field(0, description="load series sent from client nodes: a number (that many of the "
                                     "nodes that joined with a perfkit-client resource) or their names; 0: from here")
    clock_round_trips: int = Field(15, ge=3, le=1000, description="round trips per node clock offset (the tightest is "
                                   "kept)")
    connect_timeout_s: float = Field(60.0, gt=0, le=3600, description="how long an agent or a client may take to start")

    @field_validator("address")
    @classmethod
    def _address(cls, v):
        v = v.strip()
        if v == "auto" or re.fullmatch(r"(ray://)?[A-Za-z0-9.\-\[\]:]+:\d{1,5}", v):
            return v
        raise ValueError(f"{v[:80]!r}: use auto, HOST:PORT (the head node's address) or ray://HOST:PORT")

    @field_validator("clients")
    @classmethod
    def _clients(cls, v):
        if isinstance(v, int):
            if not 0 <= v <= 256:
                raise ValueError(f"clients: 0 to 256 client nodes, got {v}")
            return v
        return unique([host_name(n) for n in v], "client node")

    def client_count(self) -> int:
        return self.clients if isinstance(self.clients, int) else len(self.clients)


class HostServer(Strict):
    """An Ollama server on a named host, seen and driven by perfkit's agent on that host.

    ``command``: the agent starts the server itself with it (``[ollama, serve]``), owns it, restarts it with
    settings, can kill and revive it (failover) and stops it when the run ends. ``restart_command``: a user's
    server (systemd, docker), found by its port, restarted with settings and given its own back at the end;
    never killed. Neither: the agent only watches it."""

    host: str = Field(description="the node's perfkit name: it joined with the resource perfkit-host:NAME")
    url: str = Field(description="how clients and the proxy reach the server (its port also finds its process on the host)")
    command: list[str] | None = None
    restart_command: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict, description="with command: the server's environment beyond "
                                "perfkit's (e.g. OLLAMA_MODELS); settings come from backend.settings")
    server_log: ServerLog | None = Field(None, description="with restart_command or none: the server's log on that "
                                         "host (with command the agent keeps the server's output)")
    ready_timeout_s: float = Field(120.0, gt=0)

    @field_validator("host")
    @classmethod
    def _host(cls, v):
        return host_name(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v):
        return http_url(v)

    @model_validator(mode="after")
    def _one(self):
        if self.command and self.restart_command:
            raise ValueError("give command (the agent starts and owns the server) or restart_command (a user's own "
                             "server), not both")
        if self.command and self.server_log:
            raise ValueError("server_log is for a server the agent does not start: with command, the agent keeps the "
                             "server's own output as its log")
        if self.env and not self.command:
            raise ValueError("env is the environment of a server the agent starts (command)")
        return self


class Timeouts(Strict):
    request_s: float = Field(1800.0, gt=0, le=7 * 86400, description="whole request; a cold 72B load takes minutes")
    stall_s: float | None = Field(None, gt=0, le=7 * 86400, description="silence inside a stream")


class SamplingParams(Strict):
    interval_s: float = Field(0.1, gt=0)
    gpu: bool = True
    system: bool = True
    idle_baseline_s: float = Field(0.0, ge=0)


def _labels(v: dict[str, str] | None) -> dict[str, str] | None:
    for k in v or {}:
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", k):
            raise ValueError(f"label name {k!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
    return v


class PrometheusParams(Strict):
    """The user's Prometheus, and the labels that select the server host's series in it."""

    url: str
    labels: dict[str, str] = Field(default_factory=dict, description="select every group's series (e.g. instance)")
    gpu_labels: dict[str, str] | None = Field(None, description="DCGM exporter series, e.g. {Hostname: gpu-a}; "
                                                                "default: labels")
    host_labels: dict[str, str] | None = Field(None, description="node exporter series, e.g. {instance: "
                                                                 "'gpu-a:9100'}; default: labels")
    server_labels: dict[str, str] | None = Field(None, description="the server's own metrics (vLLM, llama-server), "
                                                                   "e.g. {job: vllm}; default: labels")
    headers: dict[str, str] = Field(default_factory=dict, description="sent to Prometheus, never recorded")
    token: str | None = Field(None, description="a bearer token for Prometheus, never recorded")
    scrape_interval_s: float | None = Field(None, gt=0, le=3600, description="the series' scrape interval; default: "
                                                                             "measured from their samples")

    @field_validator("url")
    @classmethod
    def _url(cls, v):
        return http_url(v)

    @field_validator("labels", "gpu_labels", "host_labels", "server_labels")
    @classmethod
    def _label_names(cls, v):
        return _labels(v)

    @model_validator(mode="after")
    def _something(self):
        if not (self.labels or self.gpu_labels or self.host_labels or self.server_labels):
            raise ValueError("give labels that select the server host's series (e.g. labels: {instance: gpu-a} or "
                             "gpu_labels: {Hostname: gpu-a}); without them every host in Prometheus would be read")
        return self

    def selectors(self) -> dict[str, dict[str, str]]:
        """group (gpu, host, server) → its label values (the group's own, else the common ones)."""
        out = {}
        for group, own in (("gpu", self.gpu_labels), ("host", self.host_labels), ("server", self.server_labels)):
            lab = own if own is not None else self.labels
            if lab:
                out[group] = dict(lab)
        return out

    def all_headers(self) -> dict[str, str]:
        return {**self.headers, **({"Authorization": f"Bearer {self.token}"} if self.token else {})}


class TelemetryParams(Strict):
    """Readings of the server's host from where they already are: a Prometheus, or exporter endpoints scraped
    directly (a DCGM exporter, a node exporter, the server's own /metrics)."""

    prometheus: PrometheusParams | None = None
    scrape: list[str] = Field(default_factory=list, description="exporter URLs polled directly")
    scrape_interval_s: float | None = Field(None, gt=0, le=3600, description="default: the sampling interval, at "
                                                                             "least 0.5 s")
    scrape_headers: dict[str, str] = Field(default_factory=dict, description="sent to the scraped endpoints, never "
                                                                             "recorded")
    engine_metrics: bool = Field(True, description="the server's own /metrics where its kind knows it (the "
                                 "embedded engine's, vLLM's: queue, slots, KV and prompt cache), "
                                                   "read during the studies that send load")
    engine_interval_s: float = Field(0.5, gt=0, le=60, description="how often the engine's /metrics is read (its "
                                                                   "cost to the server: bench/telemetry.py)")
    gpus: list[int] | None = Field(None, description="the server's GPUs (indexes on its host) among those the "
                                                     "telemetry reads; default: the GPUs whose memory holds a model, "
                                                     "or the only one")

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v):
        if v is not None and (not v or any(i < 0 for i in v)):
            raise ValueError("gpus: a list of GPU indexes (0, 1, …) on the server's host, at least one")
        return sorted(set(v)) if v is not None else v

    @field_validator("scrape")
    @classmethod
    def _urls(cls, v):
        return unique([http_url(u, trailing_slash=True) for u in v], "scrape URL")

    def scrape_every_s(self, sampling_interval_s: float) -> float:
        return self.scrape_interval_s or max(0.5, sampling_interval_s)


class Slo(Strict):
    """Service-level objectives a request must meet to count towards goodput."""

    ttft_s: float | None = Field(2.0, gt=0)
    tpot_s: float | None = Field(0.1, gt=0)
    e2e_s: float | None = Field(None, gt=0)
