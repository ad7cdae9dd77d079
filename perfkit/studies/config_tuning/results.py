"""What the config tuning study's analysis returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from perfkit.studies.base import StudyResult


@dataclass
class ConfigTuningResult(StudyResult):
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    rates: pd.DataFrame = field(default_factory=pd.DataFrame)
    checks: pd.DataFrame = field(default_factory=pd.DataFrame)
    best: dict[str, dict] = field(default_factory=dict)
    slo: dict[str, Any] = field(default_factory=dict)
    device: dict | None = None
    retries: int = 0
    clients: pd.DataFrame = field(default_factory=pd.DataFrame)
    load: pd.DataFrame = field(default_factory=pd.DataFrame)
