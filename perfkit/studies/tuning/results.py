"""What the tuning study's analysis returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from perfkit.analysis.decisions import BestClaim
from perfkit.analysis.sequential import Looks
from perfkit.studies.base import StudyResult


@dataclass
class TuningResult(StudyResult):
    objective: str = "rate"
    candidates: pd.DataFrame = field(default_factory=pd.DataFrame)
    claim: BestClaim | None = None
    winner: str | None = None
    winner_settings: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    proof: list = field(default_factory=list)
    cold: dict[str, Any] = field(default_factory=dict)
    stopped: str = ""
    looks: Looks = field(default_factory=lambda: Looks(1))
    files: dict[str, str] = field(default_factory=dict)
    space: dict[str, list] = field(default_factory=dict)
    capacity: tuple[float, float, int] = (math.nan, math.nan, 0)
    rate_verdicts: dict[float, str] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    objective_tag: str = ""  # the objective's metric (a TTFT objective is the first answer token where think is searched)
    objective_what: str = ""  # what it is in words
    thinking: bool = False  # think was searched, or the model thought
    ignored_think: int = 0  # requests that asked to think and streamed no thought
