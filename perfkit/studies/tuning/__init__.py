"""Tuning: from the settings a server runs to the settings it should run — searched, separated, proven, written out.

The search space is the server kind's own (its backend's ``tuning_space``), narrowed or widened by ``space:``.
Optuna's sampler proposes which setting to measure next (ordinal settings by their position, so a space of a
hundred combinations fits a budget of tens of candidates); every candidate is restarted into, confirmed from the
server's own evidence (a setting the server ignored merges the candidate with the one it really ran) and measured
with a closed loop of ``concurrency`` clients. Then the candidates race in planned looks
(:class:`perfkit.analysis.sequential.Looks`): each look measures the survivors again after a restart, the ones the
leader beats beyond the minimum effect, Holm-adjusted over the candidates, are dropped, until the leader is called
or shown equal to the rest, or the budget ends. The winner's cold start is measured (keep-alive and proxy advice),
and the winner is proven against the starting settings, both restarted in turn (runs as the unit). The settings
to deploy are written out for each server kind (environment files, a systemd drop-in, a command line) and nginx.
A request option (``think``) may be searched beside the server's settings: it is sent with every request, so
candidates that differ only in it are not restarted into, a TTFT objective is then judged by the first answer token,
and the files to deploy say that the client must send it.

Where things are: ``params`` (the parameter section, the objectives, the space), ``study`` (the phases in order),
``records`` (the candidates as recorded), ``objective`` (how a candidate is judged), one module per phase —
``search``, ``race``, ``capacity``, ``cold``, ``proof`` — with what it measures and how it is read, ``analysis``
and ``results`` (the result), ``tables`` and ``report`` (the report), ``thinking`` (what thinking costs, and a
request option in the files to deploy), ``deploy`` (the files to deploy).
"""

# Importing the study registers it (perfkit.studies.registry.discover imports this package). The names below are
# what the notebook and tests use as ``perfkit.studies.tuning.<name>``.
from . import deploy
from .analysis import analyze
from .capacity import capacity_bracket, next_rate, rate_verdicts
from .objective import eligible, objective_figure, peak_rss, race_claim, served, slo_share, steady
from .params import OBJECTIVES, SLO_SHARE, TuningParams, search_space, validate_settings_name
from .report import answer, conclusions, res_concurrency
from .results import TuningResult
from .study import Tuning
from .tables import PairRow, before_after, pair_rows, pareto_charts, trace

__all__ = ["OBJECTIVES", "SLO_SHARE", "PairRow", "Tuning", "TuningParams", "TuningResult", "analyze", "answer",
           "before_after", "capacity_bracket", "conclusions", "deploy", "eligible", "next_rate", "objective_figure",
           "pair_rows", "pareto_charts", "peak_rss", "race_claim", "rate_verdicts", "res_concurrency", "search_space",
           "served", "slo_share", "steady", "trace", "validate_settings_name"]
