"""The cold start study's parameter section (``studies.cold_start``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from perfkit.core.records import CACHE_STATES
from perfkit.core.settings import think_value
from perfkit.core.schema import MAX_GAP_S, MAX_PROMPT_WORDS, MAX_REPS, MAX_TOKENS, members, unique
from perfkit.measure.cache_states import WARMUP_STRATEGIES
from perfkit.studies.base import MeasuredInLooks, budget_field


class ColdStartParams(MeasuredInLooks):
    """``studies.cold_start``: which cache states and warmup strategies, how many repetitions."""

    # The warmup strategies are measured until answered; `reps` here is the cache states' repetitions, so the plan
    # of looks has keys of its own.
    looks_keys: ClassVar[tuple[str, str]] = ("strategy_reps", "strategy_max_reps")

    model: str
    states: list[str] = Field(default_factory=lambda: ["cold_disk", "cold_memory", "warm"], min_length=1)
    reps: int = Field(5, ge=1, le=MAX_REPS)
    num_predict: int = Field(32, ge=1, le=MAX_TOKENS)
    prompt_words: int = Field(48, ge=4, le=MAX_PROMPT_WORDS)
    strategies: list[str] = Field(default_factory=lambda: list(WARMUP_STRATEGIES))
    strategy_reps: int = Field(2, ge=1, le=MAX_REPS)
    strategy_max_reps: int | None = Field(None, ge=1, le=MAX_REPS, description=(
        "measure the warmup strategies until the fastest is called (or shown equal to the others), looking after "
        "every strategy_reps more, up to this many; unset: strategy_reps only"))
    budget_s: float | None = budget_field()
    keep_alive_s: float = Field(300.0, gt=0, description="server keep-alive during the strategy runs")
    idle_gaps_s: list[float] = Field(default_factory=lambda: [1.0])
    keep_warm_interval_s: float | None = Field(None, gt=0)
    scheme_a_delays_s: list[float] = Field(default_factory=list, description=(
        "scheme A (restart, preload at start): a user request arrives this long after the restart; "
        "empty: not measured"))
    scheme_a_reps: int = Field(2, ge=1, le=MAX_REPS)
    think: bool | Literal["low", "medium", "high"] | None = Field(None, description=(
        "sent with every request: whether a thinking model thinks (true, false) or how hard (low, medium, high); "
        "unset: not sent, and the model does what it does by default"))

    @field_validator("think", mode="before")
    @classmethod
    def _think(cls, v):
        return think_value(v)

    @field_validator("scheme_a_delays_s")
    @classmethod
    def _scheme_a(cls, v):
        if any(not 0 <= d <= MAX_GAP_S for d in v):
            raise ValueError(f"a list of delays in seconds after the restart, each 0 ≤ delay ≤ {MAX_GAP_S:g}")
        return unique(v, "scheme A delay")

    @field_validator("states")
    @classmethod
    def _states(cls, v):
        return unique(members(v, CACHE_STATES, "cache state"), "cache state")

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v):
        return unique(members(v, WARMUP_STRATEGIES, "warmup strategy"), "warmup strategy")

    @field_validator("idle_gaps_s")
    @classmethod
    def _gaps(cls, v):
        if not v or any(not 0 <= g <= MAX_GAP_S for g in v):
            raise ValueError(f"a non-empty list of idle gaps in seconds, each 0 ≤ gap ≤ {MAX_GAP_S:g}")
        return unique(v, "idle gap")
