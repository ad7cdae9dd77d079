"""The tuning study's parameter section (``studies.tuning``), its objectives, and the space it searches."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from perfkit import kinds
from perfkit.analysis.sequential import Looks
from perfkit.core import settings as SV
from perfkit.core.errors import ConfigError
from perfkit.core.schema import MAX_PROMPT_WORDS, MAX_REQUESTS, MAX_TOKENS, Slo, Strict
from perfkit.core.settings import validate_settings


OBJECTIVES = {  # objective → (metric tag, what it is in words)
    "rate": ("request_rate", "the request rate the clients sustain inside the SLOs"),
    "throughput": ("stream_throughput", "the output throughput the clients sustain inside the SLOs"),
    "ttft": ("ttft", "the time to first token at that many clients"),
}
SLO_SHARE = 0.9  # a candidate is feasible when at least this share of its requests meets every SLO
# A request option searched with no values given (``think: null``): the values every thinking model takes. No
# server kind offers it (it is no server's setting); the client sends it with every request.
REQUEST_OPTION_VALUES: dict[str, list[Any]] = {SV.THINK: [False, True]}
TTFA_OBJECTIVE = ("ttfa", "the time to first answer token at that many clients")


class TuningParams(Strict):
    """``studies.tuning``: the model, the objective and constraints, the space, and how much to measure."""

    model: str
    objective: Literal["rate", "throughput", "ttft"] = "rate"
    concurrency: int = Field(4, ge=1, le=256, description="the clients the objective is measured at")
    slo: Slo = Field(default_factory=Slo)
    memory_limit_bytes: float | None = Field(None, gt=0, description="a candidate whose server RSS peaks above "
                                             "this is not eligible")
    context_length: int | None = Field(None, ge=1, description="the context the users need: candidates with a "
                                       "smaller context length are not tried")
    space: dict[str, list[Any] | None] | None = Field(None, description=(
        "setting → the values to search (null: the server kind's own values for it); unset: the kind's whole space"))
    baseline: dict[str, Any] = Field(default_factory=dict, description="the settings the server runs today (the "
                                     "'before' of the proof); empty: the server's defaults")
    candidates: int = Field(8, ge=1, le=200, description="how many settings the search measures at most")
    requests: int = Field(12, ge=2, le=MAX_REQUESTS, description="requests per candidate at each look")
    looks: int = Field(3, ge=1, le=10, description="looks per candidate at most: the search's, then the race's")
    replicates: int = Field(3, ge=1, le=20, description="the proof: restarts of each side, interleaved")
    proof_requests: int = Field(8, ge=2, le=MAX_REQUESTS)
    cold_reps: int = Field(3, ge=1, le=50, description="cold starts of the winner (keep-alive and proxy advice)")
    capacity_steps: int = Field(3, ge=0, le=8, description="open-loop rates tried around the winner's closed-loop "
                                "rate to bracket the highest rate it sustains inside the SLOs; 0: not measured")
    rate_requests: int = Field(16, ge=4, le=MAX_REQUESTS, description="requests per open-loop rate")
    gpu_hour_usd: float | None = Field(None, gt=0, description="what an hour of the server's GPUs costs: gives $ "
                                       "per million output tokens at the winner's throughput")
    budget_s: float | None = Field(None, gt=0, description="the search and the race: no new candidate or look "
                                   "starts once it would be spent (the capacity, cold start and proof come after)")
    num_predict: int = Field(16, ge=1, le=MAX_TOKENS)
    prompt_words: int = Field(24, ge=4, le=MAX_PROMPT_WORDS)

    @field_validator("baseline")
    @classmethod
    def _baseline(cls, v):
        try:
            validate_settings(v)
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("settings: ")) from None
        return v

    @field_validator("space")
    @classmethod
    def _space(cls, v):
        for k, values in (v or {}).items():
            if values is None:
                validate_settings_name(k)
                continue
            if not isinstance(values, list) or not values:
                raise ValueError(f"{k}: a non-empty list of values to try, or null for the server kind's own")
            try:
                for x in values:
                    validate_settings({k: x})
            except ConfigError as e:
                raise ValueError(str(e).removeprefix("settings: ")) from None
        return v

    def looks_plan(self) -> Looks:
        return Looks(1, self.looks)


def validate_settings_name(name: str) -> None:
    try:
        SV.role_of(name)
    except ConfigError as e:
        raise ValueError(str(e)) from None


def search_space(c: TuningParams, kind: str) -> dict[str, list[Any]]:
    """The space searched: the kind's own when ``space:`` is unset; else exactly the settings ``space:`` names,
    each with its values, or the kind's values where it gives none (``NAME: null``). A context length the users
    need removes the smaller ones."""
    offered = kinds.tuning_space(kind)
    space = offered if c.space is None else {k: list(v) if v is not None else
                                             offered.get(k) or REQUEST_OPTION_VALUES.get(SV.role_of(k), [])
                                             for k, v in c.space.items()}
    ctx_name = next((k for k in space if SV.role_of(k) == SV.CONTEXT_LENGTH), SV.name_of(SV.CONTEXT_LENGTH))
    if c.context_length and ctx_name in space:
        space[ctx_name] = [x for x in space[ctx_name] if int(x) >= c.context_length]
    elif c.context_length:
        space[ctx_name] = [c.context_length]
    return {k: v for k, v in space.items() if v}


def thinking_searched(c: TuningParams) -> bool:
    """Whether ``think`` is among the settings tried (the space searched or today's settings)."""
    return any(SV.role_of(k) == SV.THINK for k in [*(c.space or {}), *c.baseline])


def objective_metric(c: TuningParams) -> tuple[str, str]:
    """The objective's metric tag and what it is in words. Where ``think`` is searched, a TTFT objective is judged by
    the first answer token: a thinking request's first token is a thought, so TTFT would not see what thinking
    costs the user (for a request that does not think the two are the same)."""
    return TTFA_OBJECTIVE if c.objective == "ttft" and thinking_searched(c) else OBJECTIVES[c.objective]
