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
# A thinking model's decode split in two (the same time as decode_s), its first answer token and its thoughts.
THINKING_COMPONENTS = ("load_s", "prefill_s", "thinking_s", "answer_decode_s", "overhead_s")
THINKING_COLUMNS = ("ttfa_s", "thinking_s", "answer_decode_s", "thinking_tokens")


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
    thinking: bool = False  # the model thought before answering in the cache-state trials
    think: Any = None  # what the parameters asked (True/False, a level), None when not sent

    def components(self) -> tuple[str, ...]:
        """The split of the first request's time: load, prefill, decode, overhead, the decode split into thinking
        and answer when the model thought."""
        return THINKING_COMPONENTS if self.thinking else COMPONENTS
