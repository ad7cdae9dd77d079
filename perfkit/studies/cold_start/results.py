"""What the cold start study's analysis returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from perfkit.analysis import stats
from perfkit.analysis.sequential import Looks
from perfkit.studies.base import StudyResult


COMPONENTS = ("load_s", "prefill_s", "decode_s", "overhead_s")  # the client's split of a request's time
COLD_STATES = ("cold_server", "cold_disk", "cold_memory")


@dataclass
class ColdStartResult(StudyResult):
    model: str = ""
    states: pd.DataFrame = field(default_factory=pd.DataFrame)
    by_state: pd.DataFrame = field(default_factory=pd.DataFrame)
    ratios: dict[str, stats.Estimate] = field(default_factory=dict)
    strategy_trials: pd.DataFrame = field(default_factory=pd.DataFrame)
    strategies: pd.DataFrame = field(default_factory=pd.DataFrame)
    scheme_a_trials: pd.DataFrame = field(default_factory=pd.DataFrame)
    strategy_looks: Looks = field(default_factory=lambda: Looks(1))
    strategy_looks_taken: tuple[list[int], str] | None = None
    limit: dict | None = None
    device: dict | None = None
    read_bandwidth: dict | None = None
    scheme_a_skipped: dict | None = None
    state_skipped: dict | None = None
    account: Any = None
    timeline: pd.DataFrame = field(default_factory=pd.DataFrame)
    splits: pd.DataFrame = field(default_factory=pd.DataFrame)
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)
