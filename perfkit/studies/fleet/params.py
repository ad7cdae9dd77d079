"""The fleet study's parameters: whose servers (perfkit's engines, a host's server driven by perfkit's agent there,
or a user's own seen only through their API), the proxy perfkit runs, and how much each phase measures."""

from __future__ import annotations


from pydantic import Field, field_validator, model_validator

from perfkit import kinds
from perfkit.core.schema import (MAX_GAP_S, MAX_PROMPT_WORDS, MAX_REPS, MAX_REQUESTS, MAX_TOKENS, HostServer,
                                 Strict, concurrency_list, http_url, unique)
from perfkit.workloads import WorkloadParams


class FleetProxyParams(Strict):
    """The proxy perfkit runs (nginx); a common production setup's values are the defaults."""

    read_timeout_s: float = Field(900.0, gt=0, le=MAX_GAP_S, description="proxy_read_timeout")
    buffering: bool = Field(False, description="proxy_buffering (off: streamed tokens pass as they come)")
    keepalive: int = Field(32, ge=0, le=1024, description="idle upstream connections kept per worker")
    max_fails: int = Field(1, ge=0, le=100)
    fail_timeout_s: int = Field(10, ge=1, le=3600)


class FleetParams(Strict):
    """Several servers behind a load balancer. Embedded backend: perfkit starts ``servers`` engines and
    nginx; any other backend: give ``proxy_url`` and ``server_urls`` and perfkit starts nothing."""

    model: str
    servers: int = Field(2, ge=1, le=16, description="embedded: engines to start")
    weights: list[int] | None = Field(None, description="one per server (default: equal)")
    proxy_url: str | None = None
    server_urls: list[str] = Field(default_factory=list)
    hosts: list[HostServer] = Field(default_factory=list, description="servers on other hosts, each driven by perfkit's "
                                    "agent there (needs cluster:); nginx is started here in front of them unless "
                                    "proxy_url names yours")
    api: str | None = Field(None, description="the servers' kind (as backend.kind names one): the API the study "
                            "speaks to each server and the proxy; absent: the /v1 chat-completions protocol")
    proxy: FleetProxyParams = Field(default_factory=FleetProxyParams)
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
    workload: WorkloadParams = Field(default_factory=WorkloadParams, description="what the scaling series' requests "
                                     "say (the other phases probe the proxy with perfkit's own prompts)")

    @field_validator("api")
    @classmethod
    def _api(cls, v):
        if v is None:
            return kinds.generic()
        if v not in kinds.names():
            raise ValueError(f"unknown server kind {v!r}; allowed: {', '.join(kinds.names())}")
        return v

    @field_validator("concurrency")
    @classmethod
    def _conc(cls, v: list[int]) -> list[int]:
        return concurrency_list(v)

    @field_validator("server_urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        return unique([http_url(u) for u in v], "server url")

    @field_validator("proxy_url")
    @classmethod
    def _purl(cls, v: str | None) -> str | None:
        return None if v is None else http_url(v)

    @model_validator(mode="after")
    def _shape(self) -> FleetParams:
        if self.hosts:
            self._check_hosts()
        elif bool(self.proxy_url) != bool(self.server_urls):
            raise ValueError("give both proxy_url and server_urls (a user's own fleet), or neither (embedded)")
        n = self.n_servers()
        if self.weights is not None and (len(self.weights) != n or any(w < 1 for w in self.weights)):
            raise ValueError(f"weights: one integer ≥ 1 per server ({n}), got {self.weights}")
        if self.failover_kill_after >= self.failover_requests:
            raise ValueError("failover_kill_after must be less than failover_requests")
        return self

    def _check_hosts(self) -> None:
        if self.server_urls:
            raise ValueError("give hosts (servers seen by perfkit's agents) or server_urls (servers seen only "
                             "through their API), not both")
        if not kinds.get(self.api).agent_driven:
            driven = [k for k in kinds.names() if kinds.get(k).agent_driven]
            raise ValueError(f"hosts: perfkit's agents drive {', '.join(driven)} servers; set api to one of them")
        unique([h.host for h in self.hosts], "host")
        unique([h.url for h in self.hosts], "host url")
        if self.stale_model:
            raise ValueError("stale_model is for the embedded fleet (perfkit switches the model behind the served "
                             "name); a host's server keeps its own models")

    def n_servers(self) -> int:
        return len(self.hosts) or len(self.server_urls) or self.servers

    def weight_list(self) -> list[int]:
        return self.weights or [1] * self.n_servers()
