"""Every run's figures in one history: a DuckDB database the user can query, and each figure's course over the
runs with the runs where it changed.

The run directories stay the source of truth: the database (``results/history.duckdb``) is rebuilt from them
whenever asked, never edited. Its tables:

* ``runs``: ``run_id``, ``path``, ``params_name``, ``created_utc``, ``repeat``;
* ``figures``: one row per figure per run — ``run_id``, ``created_utc``, ``study``, ``key``, ``tag``, ``label``,
  ``headline``, ``model``, ``value``, ``lo``, ``hi`` (the 95 % CI), ``n``, ``better`` (lower or higher);
* ``facts``: what each run's manifests record — ``run_id``, ``study``, ``category`` (settings, models,
  engine, host, …), ``name``, ``value`` (JSON text).

A **change** in a figure's course is a pair of consecutive runs that the comparison calls improved or worse
(the same test and minimum effect as ``perfkit compare``), with the p-values of the figure's consecutive pairs
adjusted together for the false-discovery rate (Benjamini–Hochberg): a figure measured in twenty runs gets no
more false changes than one measured in two. Each change lists what differs between the two runs' manifests.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from perfkit.analysis import verdicts
from perfkit.analysis.figures import Figure
from perfkit.analysis.verdicts import IMPROVED, NOT_COMPARABLE, WORSE, Row
from perfkit.compare import manifests
from perfkit.compare.comparison import compare_figures
from perfkit.compare.runs import Run, load
from perfkit.core import fmt
from perfkit.core.errors import PerfkitError

DB_NAME = "history.duckdb"
SHOWN_CATEGORIES = ("settings", "models", "quantization", "engine", "host", "study parameters")


def runs_in(results_dir: str | Path) -> list[Run]:
    """The readable runs of a results directory, oldest first (by creation time, then name)."""
    out = []
    for p in sorted(Path(results_dir).iterdir()) if Path(results_dir).is_dir() else []:
        if not p.is_dir() or not (p / "run.json").exists():
            continue
        try:
            out.append(load(p))
        except PerfkitError:
            continue  # a run with no figures yet, or damaged: not history
    return sorted(out, key=lambda r: (str(r.info.get("created_utc") or ""), r.name))


# ---- the database ----------------------------------------------------------------------------------------------
def _tables(runs: list[Run]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    run_rows, fig_rows, fact_rows = [], [], []
    for r in runs:
        created = r.info.get("created_utc")
        run_rows.append({"run_id": r.name, "path": str(r.path), "params_name": r.info.get("params_name"),
                         "created_utc": created, "repeat": r.replicates()})
        for key, f in r.all_figures().items():
            e = f.estimate
            fig_rows.append({"run_id": r.name, "created_utc": created, "study": f.study, "key": key, "tag": f.metric,
                             "label": f.label, "headline": f.headline or None, "model": f.model,
                             "value": fmt.finite(e.value), "lo": fmt.finite(e.lo), "hi": fmt.finite(e.hi), "n": int(e.n or 0),
                             "better": f.m.better})
        for s, m in r.manifests.items():
            for name, (cat, v) in _facts(m).items():
                fact_rows.append({"run_id": r.name, "study": s, "category": cat, "name": name,
                                  "value": json.dumps(v, default=str)})
    return pd.DataFrame(run_rows), pd.DataFrame(fig_rows), pd.DataFrame(fact_rows)


def _facts(m: dict) -> dict[str, tuple[str, Any]]:
    """Everything a manifest records, by dotted name, with its category (settings, models, engine, host …)."""
    out = dict(manifests.facts(m))
    for k, v in manifests.flat(m.get("params") or {}).items():
        out.setdefault(k, (manifests.param_category(k), v))
    return out


def build(results_dir: str | Path, db_path: str | Path | None = None) -> Path:
    """(Re)build the history database from every run in ``results_dir``; its path."""
    import duckdb

    results_dir = Path(results_dir)
    db = Path(db_path) if db_path else results_dir / DB_NAME
    runs_df, figs_df, facts_df = _tables(runs_in(results_dir))
    tmp = db.with_name(db.name + ".tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        for name, df, cols in (("runs", runs_df, "run_id VARCHAR, path VARCHAR, params_name VARCHAR, "
                                                  "created_utc VARCHAR, repeat INTEGER"),
                               ("figures", figs_df, "run_id VARCHAR, created_utc VARCHAR, study VARCHAR, key VARCHAR, "
                                                    "tag VARCHAR, label VARCHAR, headline VARCHAR, model VARCHAR, "
                                                    "value DOUBLE, lo DOUBLE, hi DOUBLE, n INTEGER, better VARCHAR"),
                               ("facts", facts_df, "run_id VARCHAR, study VARCHAR, category VARCHAR, name VARCHAR, "
                                                  "value VARCHAR")):
            con.execute(f"CREATE TABLE {name} ({cols})")
            if len(df):
                con.register("df", df)
                con.execute(f"INSERT INTO {name} SELECT * FROM df")
                con.unregister("df")
    finally:
        con.close()
    tmp.replace(db)
    return db


def query(sql: str, db_path: str | Path) -> pd.DataFrame:
    """Run ``sql`` on the history database (read-only); PerfkitError with DuckDB's own words when it fails."""
    import duckdb

    try:
        con = duckdb.connect(str(db_path), read_only=True)
    except duckdb.Error as e:
        raise PerfkitError(f"{db_path}: can't open the history ({e}); `perfkit history --rebuild` makes it") from None
    try:
        return con.execute(sql).df()
    except duckdb.Error as e:
        raise PerfkitError(f"the query failed: {str(e).splitlines()[0]} (tables: runs, figures, facts)") from None
    finally:
        con.close()


# ---- each figure's course, and where it changed ---------------------------------------------------------------
@dataclass
class Change:
    """Between two consecutive runs a figure was compared in: the comparison's row and what differs."""

    run_before: str
    run_after: str
    row: Row
    differences: list[str]


@dataclass
class Course:
    """One figure over the runs that measured it (oldest first), and the runs where it changed."""

    key: str
    label: str
    headline: str
    better: str
    points: list[tuple[Run, Figure]]
    changes: list[Change] = field(default_factory=list)
    not_comparable: list[tuple[str, str, str]] = field(default_factory=list)  # (run before, run after, why)


def courses(runs: list[Run], *, headlines_only: bool = True, min_effect: float | None = None) -> list[Course]:
    """Each figure measured in at least two runs, its consecutive pairs compared, FDR-adjusted per figure."""
    by_key: dict[str, list[tuple[Run, Figure]]] = {}
    for r in runs:
        for key, f in r.all_figures().items():
            if not headlines_only or f.headline:
                by_key.setdefault(key, []).append((r, f))
    eff = verdicts.MIN_EFFECT if min_effect is None else min_effect
    out = []
    for key, pts in by_key.items():
        f0 = pts[-1][1]
        c = Course(key, f0.label, f0.headline or "", f0.m.better, pts)
        rows = []
        for (ra, fa), (rb, fb) in zip(pts, pts[1:]):
            runs_mode = min(len(fa.replicates), len(fb.replicates)) >= verdicts.MIN_REPLICATES
            row = compare_figures(fa, fb, runs_mode=runs_mode, min_effect=eff)
            if fa.workload != fb.workload:
                row.verdict, row.p_value = NOT_COMPARABLE, math.nan
                why = "; ".join(f"{k} {fa.workload.get(k, '(absent)')} → {fb.workload.get(k, '(absent)')}"
                                for k in sorted(set(fa.workload) | set(fb.workload))
                                if fa.workload.get(k) != fb.workload.get(k))
                c.not_comparable.append((ra.name, rb.name, why))
            rows.append((ra, rb, row))
        verdicts.fdr_by_family([r for _, _, r in rows])
        for ra, rb, row in rows:
            if row.verdict in (IMPROVED, WORSE):
                diffs = [f"{d.what}: {manifests.show(d.a)} → {manifests.show(d.b)}"
                         for d in manifests.differences(ra, rb) if d.category in SHOWN_CATEGORIES]
                c.changes.append(Change(ra.name, rb.name, row, diffs))
        out.append(c)
    return out
