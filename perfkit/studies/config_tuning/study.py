"""The config tuning study: server settings × client concurrency, and the rate each setting sustains."""

from __future__ import annotations

from typing import Any

from perfkit.studies.base import Study, StudyContext, settings_preflight
from perfkit.studies.registry import register

from .analysis import analyze
from .measurement import measure
from .params import ConfigTuningParams
from .report import conclusions
from .results import ConfigTuningResult


@register
class ConfigTuning(Study):
    name = "config_tuning"
    title = "Server settings × concurrency"
    question = "Which server settings are best for latency, throughput and memory, and what rate do they sustain?"
    Params = ConfigTuningParams
    order = 40

    def preflight(self, params: Any) -> list[str]:
        return settings_preflight(params, "studies.config_tuning.settings", params.studies.config_tuning.settings)

    def measure(self, ctx: StudyContext) -> None:
        measure(ctx)

    def analyze(self, ctx: StudyContext) -> ConfigTuningResult:
        return analyze(ctx)

    def conclusions(self, result: ConfigTuningResult) -> str:
        return conclusions(result)
