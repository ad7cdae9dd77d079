"""The config tuning study's parameter section (``studies.config_tuning``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from perfkit.core.schema import (MAX_PROMPT_WORDS, MAX_REQUESTS, MAX_TOKENS, Slo, Strict, concurrency_list,
                                 settings_list, unique)
from perfkit.workloads import WorkloadParams


class ConfigTuningParams(Strict):
    """``studies.config_tuning``: the settings to try, the client concurrencies, and optionally an open-loop
    rate sweep (absent: only closed-loop series are measured)."""

    model: str
    slo: Slo = Field(default_factory=Slo)
    settings: list[dict[str, Any]] = Field(min_length=1, description="one server configuration per entry")
    concurrency: list[int] = Field(default_factory=lambda: [1, 4])
    requests: int = Field(8, ge=1, le=MAX_REQUESTS)
    rates_rps: list[float] | Literal["auto"] = Field(
        default_factory=list, description="open-loop request rates to sweep (goodput vs rate); auto: fractions of "
        "each setting's measured capacity (rate_fractions); empty: no sweep")
    rate_fractions: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0],
                                        description="with rates_rps: auto, the rates as shares of the capacity the "
                                                    "closed loop measured at the most clients")
    rate_search_steps: int = Field(2, ge=0, le=8, description=(
        "with rates_rps: auto, rates tried beyond rate_fractions until one rate is sustained and the next is not, "
        "within 1.5× (the highest doubled while every rate was sustained, the lowest halved while none was, a "
        "wider bracket split at its geometric middle)"))
    rate_requests: int = Field(12, ge=2, le=MAX_REQUESTS, description="requests per open-loop rate")
    rate_extend: int = Field(2, ge=0, le=4, description=(
        "times a rate whose latency trend can't tell (at this n) whether the server kept up is measured again, "
        "each time with twice the requests, before the sweep moves on"))
    arrivals: Literal["poisson", "constant", "gamma"] = "poisson"
    burstiness: float = Field(1.0, gt=0, le=100, description="arrivals: gamma: the gaps' shape (1: Poisson; below 1: "
                                                             "bursts and lulls)")
    num_predict: int = Field(32, ge=2, le=MAX_TOKENS)
    prompt_words: int = Field(48, ge=4, le=MAX_PROMPT_WORDS)
    workload: WorkloadParams = Field(default_factory=WorkloadParams, description="what the requests say (default: "
                                     "synthetic prompts no cache can serve)")

    @model_validator(mode="after")
    def _workload_fits(self):
        if self.workload.multi_turn and self.rates_rps:
            raise ValueError("workload kind sessions runs closed-loop users; an open-loop rate sweep (rates_rps) sends "
                             "one-shot requests: use kind dataset for the sweep, or rates_rps: []")
        if self.burstiness != 1.0 and self.arrivals != "gamma":
            raise ValueError("burstiness is used only with arrivals: gamma")
        return self

    @field_validator("rates_rps")
    @classmethod
    def planned_rates(cls, v):
        if v == "auto":
            return v
        if any(not 0 < r <= 10_000 for r in v):
            raise ValueError("request rates must be > 0 and ≤ 10000 per second")
        return unique(v, "rate")

    @field_validator("rate_fractions")
    @classmethod
    def _fractions(cls, v):
        if not v or any(not 0 < f <= 4 for f in v):
            raise ValueError("a non-empty list of shares of the measured capacity, each > 0 and ≤ 4")
        return unique(v, "rate fraction")

    @field_validator("settings")
    @classmethod
    def _grid(cls, v):
        return settings_list(v)

    @field_validator("concurrency")
    @classmethod
    def _conc(cls, v):
        return concurrency_list(v)
