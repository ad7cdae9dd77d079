"""Cold start: why is the first request slow, and which warmup fixes it.

First-request latency in each cache state (server restarted, cold disk, cold memory, first request
after a load, warm, cached prompt), decomposed into load / prefill / decode / overhead by the client
and into spawn / init / runner start / first token by the server's own log; the warmup strategies
and the first request a user sees after an idle gap; scheme A (restart, preload at start); load time
against its physical limit (file bytes / the disk's measured read bandwidth).

Where things are: ``params`` (the parameter section), ``study`` and ``measurement`` (what is measured, in order),
``analysis`` and ``results`` (the result, its figures and the warmup strategies' claims), ``tables`` and
``report`` (the report).
"""

# Importing the study registers it (perfkit.studies.registry.discover imports this package). The names below are
# what the notebook and tests use as ``perfkit.studies.cold_start.<name>``.
from .analysis import analyze, load_limit, strategy_claims
from .measurement import plan
from .params import ColdStartParams
from .report import answer, conclusions
from .results import COLD_STATES, COMPONENTS, ColdStartResult
from .study import ColdStart
from .tables import (before_after, decomposition_chart, limit_text, scheme_a_table, split_table, state_latency,
                     state_table, timeline_table)

__all__ = ["COLD_STATES", "COMPONENTS", "ColdStart", "ColdStartParams", "ColdStartResult", "analyze", "answer",
           "before_after", "conclusions", "decomposition_chart", "limit_text", "load_limit", "plan", "scheme_a_table",
           "split_table", "state_latency", "state_table", "strategy_claims", "timeline_table"]
