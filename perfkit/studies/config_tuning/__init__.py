"""Config tuning: server settings × client concurrency. The server restarts for each setting, each setting is
checked to have taken effect, and the best setting per objective is named with its CI; an optional open-loop
sweep finds the request rate each setting sustains within the SLOs.

Where things are: ``params`` (the parameter section), ``study`` and ``measurement`` (what is measured, in order),
``rates`` (the open-loop sweep: which rates, and the verdict on each), ``analysis`` and ``results`` (the result
and its figures), ``tables`` and ``report`` (the report).
"""

# Importing the study registers it (perfkit.studies.registry.discover imports this package). The names below are
# what the notebook and tests use as ``perfkit.studies.config_tuning.<name>``.
from .analysis import analyze, best
from .measurement import label
from .params import ConfigTuningParams
from .rates import (closed_capacity, judge_rate, next_rate, planned_rates, rate_rows, rate_table, series_seed,
                    setting_slots)
from .report import answer, conclusions, rate_conclusion, slo_text
from .results import ConfigTuningResult
from .study import ConfigTuning
from .tables import (baseline_vs_best, goodput_chart, latency_display, load_display, load_sources, rates_display,
                     settings_table, throughput_display)

__all__ = ["ConfigTuning", "ConfigTuningParams", "ConfigTuningResult", "analyze", "answer", "baseline_vs_best", "best",
           "closed_capacity", "conclusions", "goodput_chart", "judge_rate", "label", "latency_display", "load_display",
           "load_sources", "next_rate", "planned_rates", "rate_conclusion", "rate_rows", "rate_table", "rates_display",
           "series_seed", "setting_slots", "settings_table", "slo_text", "throughput_display"]
