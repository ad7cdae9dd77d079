"""The cold start study: where the first request's time goes, and which warmup fixes it."""

from __future__ import annotations

from perfkit.studies.base import Study, StudyContext
from perfkit.studies.registry import register

from .analysis import analyze
from .measurement import measure
from .params import ColdStartParams
from .report import conclusions
from .results import ColdStartResult


@register
class ColdStart(Study):
    name = "cold_start"
    title = "Cold start: where the first request's time goes"
    question = "Why is the first request slow, and which warmup fixes it?"
    Params = ColdStartParams
    order = 10

    def measure(self, ctx: StudyContext) -> None:
        measure(ctx)

    def analyze(self, ctx: StudyContext) -> ColdStartResult:
        return analyze(ctx)

    def conclusions(self, result: ColdStartResult) -> str:
        return conclusions(result)
