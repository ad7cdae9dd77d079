"""Figures: one metric (from the catalogue) measured under one condition in one run, and the versioned file
that carries a study's figures from its analysis to every place that shows them.

A study's analysis builds its figures once (:func:`per_request`, :func:`from_estimate`, :func:`reading`) and
writes them to ``<run>/<study>/figures.json``; its report, the results index and ``perfkit compare`` read the
same objects, so a figure has one value and one CI everywhere. The file's data model is versioned
(:data:`SCHEMA_VERSION`); ``perfkit compare`` knows only this model, never a study's trial ids.

When a run holds several replicates of a study (``perfkit run --repeat N``), each figure also carries its
value in every replicate (``replicates``) and its CI spans the between-run spread, not only the requests'.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd

from perfkit.analysis import stats
from perfkit.analysis.metrics import Metric, metric
from perfkit.core import fmt
from perfkit.core.units import Unit

SCHEMA_VERSION = 1
FILE_NAME = "figures.json"


# ---- the figure -----------------------------------------------------------------------------------------

@dataclass
class Figure:
    """One metric measured under one condition in one run.

    ``key``: ``<study>/<metric tag>/<condition…>``; ``where``: the condition as labelled values (a cache state,
    a model, a setting and a client count); ``estimate``: value, CI and n (n counts what the metric says);
    ``samples``: the per-request values behind it, when it has them (compare's rank tests use them);
    ``replicates``: its value in each replicate of the study in this run (empty for a single run);
    ``noisy``: the share (0–1) of its requests that ran while other processes used the machine (NaN when
    not sampled); ``model``: the model it measured; ``workload``: what must be equal for two runs' figures to
    be comparable (prompt and output sizes, concurrency, SLOs); ``headline``: its name among the few figures
    the results index and the top of a comparison show.
    """

    key: str
    metric: str
    where: dict[str, Any]
    estimate: stats.Estimate
    samples: list[float] = field(default_factory=list)
    replicates: list[float] = field(default_factory=list)
    noisy: float = math.nan
    model: str | None = None
    workload: dict[str, Any] = field(default_factory=dict)
    headline: str = ""

    @property
    def m(self) -> Metric:
        return metric(self.metric)

    @property
    def study(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def unit(self) -> Unit:
        return self.m.unit

    @property
    def better(self) -> str:
        return self.m.better

    @property
    def n(self) -> int:
        return self.estimate.n

    @property
    def value(self) -> float:
        return self.estimate.value

    @property
    def conditions(self) -> str:
        """What it was measured under, in words: 'warm', 'FLASH_ATTENTION=1, 4 clients'."""
        return ", ".join(_where_text(k, v) for k, v in self.where.items())

    @property
    def label(self) -> str:
        """'time to first token (warm)', 'output throughput (FLASH_ATTENTION=1, 4 clients)'."""
        cond = self.conditions
        return f"{self.m.label} ({cond})" if cond else self.m.label

    def text(self) -> str:
        """Value, CI and n in the unit that reads well: '412 ms [398, 431] (n=8)'; n says what it counts
        when that is not requests; a CI wider than the value itself says the figure is not measurable at
        this n, and about how much more data would make it ±25%."""
        e = self.estimate
        t = self.unit.estimate(e)
        # A figure combined over replicate runs without per-request samples is a mean over runs: n counts runs.
        counts = "runs" if self.replicates and not self.samples and e.n == len(self.replicates) else self.m.n_counts
        if counts != "requests" and f"n={e.n}" in t and e.n_a is None:
            t = t.replace(f"n={e.n}", f"n={e.n} {counts}", 1)
        # A share of rare events (failures) is measured by its count: a relative precision says nothing of it.
        if self.m.stat != "share" and e.has_ci and math.isfinite(e.value) and math.isfinite(e.hi) and e.value \
                and (e.hi - e.lo) > abs(e.value):
            more = ((e.hi - e.lo) / (0.5 * abs(e.value))) ** 2
            what = ("longer series (≈ {:.0f}× the requests per series)" if counts == "windows" else
                    "≈ {:.0f}× the " + counts).format(math.ceil(more))
            t += f" — not measurable at this n: the CI is wider than the value; {what} would give about ±25%"
        return t

    @property
    def anchor(self) -> str:
        """The id of this figure's row in a report's table of figures."""
        return "fig-" + hashlib.sha1(self.key.encode()).hexdigest()[:10]

    def link(self, text: str | None = None) -> str:
        """Markdown: ``text`` (default the value with its unit) linked to this figure's row in the report."""
        return f"[{text or self.unit.text(self.value)}](#{self.anchor})"

    def short(self) -> str:
        """Value and n only, for compact places (the index): '412 ms (n=8)'."""
        return f"{self.unit.text(self.value)} (n={self.n})"

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "metric": self.metric, "where": self.where, "estimate": self.estimate.as_dict(),
                "samples": self.samples, "replicates": self.replicates, "noisy": self.noisy, "model": self.model,
                "workload": self.workload, "headline": self.headline, "label": self.label, "text": self.text()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Figure":
        return cls(key=d["key"], metric=d["metric"], where=dict(d.get("where") or {}),
                   estimate=stats.Estimate.from_dict(d["estimate"]),
                   samples=[stats.as_float(x) for x in d.get("samples") or []],
                   replicates=[stats.as_float(x) for x in d.get("replicates") or []],
                   noisy=stats.as_float(d.get("noisy")),
                   model=d.get("model"), workload=dict(d.get("workload") or {}), headline=d.get("headline") or "")


_WHERE = {"clients": lambda v: f"{v} client{'s' if str(v) != '1' else ''}", "rate_rps": lambda v: f"{v} req/s offered",
          "users": lambda v: f"{v} user{'s' if str(v) != '1' else ''}", "turn": lambda v: f"turn {v}",
          "gap_s": lambda v: f"after a {fmt.duration(float(v))} idle gap", "delay_s": lambda v: f"+{fmt.duration(float(v))}"}


def _where_text(k: str, v: Any) -> str:
    f = _WHERE.get(k)
    return f(v) if f else str(v)


@dataclass
class Pair:
    """One row of a before/after table inside a run: the figure ``before`` (the starting point, e.g. no warmup or
    the first setting) against ``after`` (the fix the study found), both keys of the same study; ``row`` names
    what is compared, ``before_is`` and ``after_is`` say what each side was."""

    row: str
    before: str
    after: str
    before_is: str
    after_is: str


class FigureSet(Mapping[str, Figure]):
    """A study's figures by key, in the order the study made them, and its before/after pairs (``pairs``)."""

    def __init__(self, figures: Iterable[Figure | None] = (), pairs: Iterable[Pair] = ()):
        self._d: dict[str, Figure] = {}
        for f in figures:
            self.add(f)
        self.pairs: list[Pair] = []
        for p in pairs:
            self.pair(p)
        # The study's noisy requests (perfkit.analysis.requests.noisy_counts), counted once for every page.
        self.noisy: dict[str, float] | None = None

    def pair(self, p: Pair) -> None:
        """Add a before/after row; ignored unless both figures are in the set (nothing to show otherwise)."""
        if p.before in self._d and p.after in self._d and p.before != p.after:
            self.pairs.append(p)

    def add(self, f: Figure | None) -> Figure | None:
        if f is not None:
            self._d[f.key] = f
        return f

    def __getitem__(self, key: str) -> Figure:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def headlines(self) -> list[Figure]:
        return [f for f in self._d.values() if f.headline]

    def table(self) -> pd.DataFrame:
        """Every figure: label, value with CI and n, and how it is computed."""
        rows = [{"figure": f.label, "value": f.text(), "how": f.m.method} for f in self._d.values()]
        return pd.DataFrame(rows).set_index("figure") if rows else pd.DataFrame()

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        data = {"schema_version": SCHEMA_VERSION, "figures": [f.as_dict() for f in self._d.values()],
                "before_after": [asdict(p) for p in self.pairs], "noisy": self.noisy}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(dumps(data))
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> "FigureSet":
        """A figures file; ValueError when it is not one, or of a newer schema than this perfkit reads."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or "figures" not in data:
            raise ValueError(f"{path}: not a perfkit figures file")
        if int(data.get("schema_version", 0)) > SCHEMA_VERSION:
            raise ValueError(f"{path}: schema version {data['schema_version']} is newer than this perfkit reads "
                             f"({SCHEMA_VERSION}); upgrade perfkit")
        out = cls((Figure.from_dict(d) for d in data["figures"]),
                  (Pair(**p) for p in data.get("before_after") or []))
        out.noisy = data.get("noisy") if isinstance(data.get("noisy"), dict) else None
        return out


def dumps(data: Any, indent: int = 1) -> str:
    """Strict JSON for perfkit's files: NaN as null, ±inf as "inf"/"-inf" (a censored value, which
    :func:`perfkit.analysis.stats.as_float` reads back as one), numpy scalars as numbers, anything else as its text."""
    return json.dumps(_nan_to_none(data), indent=indent, default=_default)


def _default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return str(o)


def _nan_to_none(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, np.floating):
        return _nan_to_none(float(o))
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_nan_to_none(v) for v in o]
    return o


# ---- building figures -------------------------------------------------------------------------------------

def _col(rows: pd.DataFrame, name: str) -> pd.Series:
    return rows[name] if name in rows else pd.Series(np.nan, index=rows.index, dtype=float)


def clean(values: Iterable) -> list[float]:
    """Finite numbers (and +inf, a censored value) from any iterable; None, NaN and text dropped."""
    a = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").astype(float)
    return [float(v) for v in a if not math.isnan(v) and v != -math.inf]


def noisy_share(rows: pd.DataFrame) -> float:
    """Share of ``rows`` flagged ``res_noisy`` (other processes used the machine), NaN when not sampled."""
    if rows.empty or "res_noisy" not in rows or rows["res_noisy"].isna().all():
        return math.nan
    return float(rows["res_noisy"].astype("boolean").fillna(False).astype(bool).mean())


def _per_request_stat(values: list[float], stat: str) -> float:
    return stats.estimate(values, stat).value


def with_replicates(est: stats.Estimate, per_replicate: list[float]) -> stats.Estimate:
    """An estimate whose CI also spans the between-run spread: with ≥ 2 replicates, value (pooled) ±
    Student t × the standard error of the replicates' own values, never narrower than the pooled CI."""
    x = [v for v in per_replicate if math.isfinite(v)]
    if len(x) < 2 or not math.isfinite(est.value):
        return est
    from scipy import stats as st

    half = float(st.t.ppf((1 + est.confidence) / 2, len(x) - 1) * np.std(x, ddof=1) / math.sqrt(len(x)))
    lo, hi = est.value - half, est.value + half
    if est.has_ci:
        lo, hi = min(lo, est.lo), max(hi, est.hi)
    return stats.Estimate(est.stat, est.value, lo, hi, est.n, est.confidence,
                          f"{est.method}; CI widened by the spread of {len(x)} replicate runs (t, {len(x) - 1} dof)",
                          None, est.note, est.n_a, est.n_b)


def per_request(study: str, tag: str, rows: pd.DataFrame, values: Callable[[pd.DataFrame], list[float]] | str,
                *, where: Mapping[str, Any] | None = None, model: str | None = None,
                workload: Mapping[str, Any] | None = None, headline: str = "", stat: str | None = None) -> Figure | None:
    """A figure from per-request values (``values``: a column name or a function of the rows), its statistic
    from the catalogue; None when there are no values."""
    get = (lambda r: clean(_col(r, values))) if isinstance(values, str) else (lambda r: clean(values(r)))
    samples = get(rows)
    if not samples:
        return None
    m = metric(tag)
    stat = stat or m.stat
    est = stats.estimate(samples, stat)
    reps = replicate_values(rows, lambda r: _per_request_stat(get(r), stat))
    return Figure(_key(study, tag, where), tag, dict(where or {}), with_replicates(est, reps), samples, reps,
                  noisy_share(rows), model, dict(workload or {}), headline)


def from_estimate(study: str, tag: str, est: stats.Estimate, rows: pd.DataFrame | None = None, *,
                  where: Mapping[str, Any] | None = None, model: str | None = None,
                  workload: Mapping[str, Any] | None = None, headline: str = "",
                  per_replicate: Callable[[pd.DataFrame], float] | None = None) -> Figure | None:
    """A figure whose estimate is computed elsewhere (a series' throughput, a share, a shift); None when it
    has no value. ``per_replicate(rows)`` recomputes it on one replicate's rows."""
    if not math.isfinite(stats.as_float(est.value)):
        return None
    reps = replicate_values(rows, per_replicate) if rows is not None and per_replicate is not None else []
    return Figure(_key(study, tag, where), tag, dict(where or {}), with_replicates(est, reps), [], reps,
                  noisy_share(rows) if rows is not None else math.nan, model, dict(workload or {}), headline)


def failed_share(study: str, rows: pd.DataFrame, *, where: Mapping[str, Any] | None = None,
                 model: str | None = None, workload: Mapping[str, Any] | None = None) -> Figure | None:
    """The share of a series' requests that failed (``ok`` false), each request a 0/1 sample so that two runs
    compare by an exact test; None without requests."""
    if rows is None or rows.empty or "ok" not in rows:
        return None
    failed = (~rows["ok"].astype("boolean").fillna(False).astype(bool)).astype(float)
    est = stats.proportion(int(failed.sum()), len(failed))
    reps = replicate_values(rows, lambda r: float((~r["ok"].astype("boolean").fillna(False).astype(bool)).mean()))
    return Figure(_key(study, "failed", where), "failed", dict(where or {}), with_replicates(est, reps),
                  failed.tolist(), reps, noisy_share(rows), model, dict(workload or {}))


def share(study: str, tag: str, flags: pd.Series, rows: pd.DataFrame, *, where: Mapping[str, Any] | None = None,
          model: str | None = None, workload: Mapping[str, Any] | None = None) -> Figure | None:
    """The share of ``rows`` whose ``flags`` are true (NaN flags left out), each row a 0/1 sample so that two runs
    compare by an exact test; None without a flag."""
    f = flags.dropna().astype(bool).astype(float)
    if f.empty:
        return None
    est = stats.proportion(int(f.sum()), len(f))
    return Figure(_key(study, tag, where), tag, dict(where or {}), est, f.tolist(), [], noisy_share(rows), model,
                  dict(workload or {}))


def reading(study: str, tag: str, value: Any, *, where: Mapping[str, Any] | None = None, model: str | None = None,
            headline: str = "", note: str = "one reading") -> Figure | None:
    """A figure recorded once per run (no samples, no CI)."""
    v = stats.as_float(value)
    if not math.isfinite(v):
        return None
    est = stats.Estimate("value", v, math.nan, math.nan, 1, method="one reading", note=note)
    return Figure(_key(study, tag, where), tag, dict(where or {}), est, [], [], math.nan, model, {}, headline)


def replicate_values(rows: pd.DataFrame | None, fn: Callable[[pd.DataFrame], float]) -> list[float]:
    """``fn`` of each replicate's rows, when the rows come from ≥ 2 replicates of the study; else []."""
    if rows is None or rows.empty or "replicate" not in rows:
        return []
    reps = rows["replicate"].fillna(1)
    if reps.nunique() < 2:
        return []
    out = []
    for _, g in rows.groupby(reps, sort=True):
        try:
            out.append(float(fn(g)))
        except (ValueError, KeyError, ZeroDivisionError):
            out.append(math.nan)
    return out


def _key(study: str, tag: str, where: Mapping[str, Any] | None) -> str:
    return "/".join([study, tag, *(str(v) for v in (where or {}).values())])


def combine(sets: list[FigureSet]) -> FigureSet:
    """One figure set from replicate runs of a study: each figure all of them measured carries every run's
    value (``replicates``), its requests pooled (``samples``), and an estimate whose CI spans the
    between-run spread: per-request figures keep the pooled statistic, widened by the runs' t-interval
    (:func:`with_replicates`); series and single readings take the mean over runs with that t-interval.
    Headlines and workloads come from the first run; a figure missing from some run is left out."""
    if len(sets) <= 1:
        return sets[0] if sets else FigureSet()
    out = FigureSet()
    for key, first in sets[0].items():
        figs = [s.get(key) for s in sets]
        if any(f is None for f in figs):
            continue
        values = [f.value for f in figs]
        samples = [x for f in figs for x in f.samples]
        if samples and first.samples:
            est = with_replicates(stats.estimate(samples, first.estimate.stat if first.estimate.stat in
                                                 ("median", "mean") or first.estimate.stat.startswith("p")
                                                 else first.m.stat), values)
        else:
            est = stats.replicate_ci(values, first.estimate.stat or "mean")
            est = stats.Estimate(est.stat, est.value, est.lo, est.hi, len(values), est.confidence,
                                 f"mean over {len(values)} replicate runs, t-interval", None, est.note)
        noisy = [f.noisy for f in figs if math.isfinite(f.noisy)]
        out.add(Figure(key, first.metric, dict(first.where), est, samples, values, max(noisy) if noisy else math.nan,
                       first.model, dict(first.workload), first.headline))
    for p in sets[0].pairs:
        out.pair(p)
    counted = [s.noisy for s in sets if s.noisy]
    if counted:
        n = sum(c["noisy"] for c in counted)
        out.noisy = {"noisy": n, "requests": sum(c["requests"] for c in counted),
                     "other_cpu_pct": sum(c["other_cpu_pct"] * c["noisy"] for c in counted) / n if n else 0.0,
                     "steal_pct": sum(c["steal_pct"] * c["noisy"] for c in counted) / n if n else 0.0}
    return out
