"""What a study says of the turns of conversations that offer tools: per group, whether the server called a tool
on each question, with valid arguments, as the dataset's own answer did, calls left unparsed in the text, and
what the turns that answer a tool's result cost against the questions (TTFT, as a ratio with its CI)."""

from __future__ import annotations

import math
from typing import Any, Callable

import pandas as pd

from perfkit.analysis import figures as F
from perfkit.analysis.figures import FigureSet
from perfkit.analysis.requests import ci_cell, col, est
from perfkit.analysis.verdicts import compare_samples
from perfkit.core.units import RATIO, SECONDS

QUESTION, TOOL_RESULT = "question", "tool_result"
KIND_LABEL = {QUESTION: "question", TOOL_RESULT: "answering a tool's result"}


def has_tools(df: pd.DataFrame) -> bool:
    return "tools_offered" in df and pd.to_numeric(df["tools_offered"], errors="coerce").fillna(0).gt(0).any()


def _flag(rows: pd.DataFrame, name: str) -> pd.Series:
    """A 0/1 column with its gaps kept (None: the verdict does not apply to that turn)."""
    return col(rows, name).map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else bool(v))


def add_figures(figs: FigureSet, study: str, rows: pd.DataFrame, every: pd.DataFrame, where: dict[str, Any],
                workload: dict[str, Any] | None = None) -> None:
    """Shares over the question turns (called, valid, as expected), calls left unparsed (over every turn sent: a
    server that fails a request over a call it can't parse counts) and TTFT of the turns answering a tool's result,
    for one group's measured turns (``rows``) of all it sent (``every``)."""
    q = rows[col(rows, "turn_kind") == QUESTION]
    figs.add(F.share(study, "tool_called", _flag(q, "tool_called"), q, where=where, workload=workload))
    figs.add(F.share(study, "tool_valid", _flag(rows, "tool_valid"), rows, where=where, workload=workload))
    figs.add(F.share(study, "tool_as_expected", _flag(q, "tool_as_expected"), q, where=where, workload=workload))
    not_called = every[~_flag(every, "tool_called").fillna(False).astype(bool)]
    figs.add(F.share(study, "tool_unparsed", _flag(not_called, "tool_unparsed"), not_called, where=where,
                     workload=workload))
    t = rows[col(rows, "turn_kind") == TOOL_RESULT]
    figs.add(F.per_request(study, "ttft", t, "ttft_s", where={**where, "turn": KIND_LABEL[TOOL_RESULT]},
                           workload=workload))


def table(df: pd.DataFrame, every: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per group and turn kind: n, failed, TTFT p50 (95% CI), and the tool verdicts' counts."""
    rows = []
    if not has_tools(every):
        return pd.DataFrame()
    for key, g_all in every.groupby(keys + ["turn_kind"], sort=True):
        g = df[(df[keys + ["turn_kind"]] == pd.Series(dict(zip(keys + ["turn_kind"], key)))).all(axis=1)] \
            if len(df) else df
        called = _flag(g, "tool_called").fillna(False).astype(bool)
        valid = _flag(g, "tool_valid")
        expected = _flag(g, "tool_as_expected")
        problems = col(g_all, "tool_problem").dropna()
        e = est(col(g, "ttft_s"))
        rows.append({**dict(zip(keys + ["turn_kind"], key)), "n": len(g), "failed": len(g_all) - len(g),
                     "ttft_p50_s": e.value, "ttft": ci_cell(e), "called": int(called.sum()),
                     "valid": int(valid.fillna(False).astype(bool).sum()), "with_calls": int(valid.notna().sum()),
                     "as_expected": int(expected.fillna(False).astype(bool).sum()),
                     "expected_known": int(expected.notna().sum()),
                     "unparsed": int(_flag(g_all, "tool_unparsed").fillna(False).astype(bool).sum()),
                     "parse_failed": int((_flag(g_all, "tool_unparsed").fillna(False).astype(bool)
                                          & ~col(g_all, "ok").astype("boolean").fillna(False).astype(bool)).sum()),
                     "cut": int(_flag(g_all, "tool_rounds_cut").fillna(False).astype(bool).sum()),
                     "first_problem": str(problems.iloc[0]) if len(problems) else ""})
    return pd.DataFrame(rows)


def display(t: pd.DataFrame, keys: dict[str, str]) -> pd.DataFrame:
    """The table for a page: ``keys`` maps each group column to its heading."""
    if t.empty:
        return t
    out = pd.DataFrame({**{label: t[k] for k, label in keys.items()},
                        "turn": t["turn_kind"].map(KIND_LABEL), "n": t["n"], "TTFT p50": t["ttft"],
                        "called a tool": [f"{c} of {n}" for c, n in zip(t["called"], t["n"])],
                        "valid calls": [f"{v} of {w}" if w else "—" for v, w in zip(t["valid"], t["with_calls"])],
                        "as the dataset's answer": [f"{a} of {k}" if k else "—"
                                                    for a, k in zip(t["as_expected"], t["expected_known"])],
                        "unparsed calls": t["unparsed"], "failed": t["failed"],
                        "first problem": t["first_problem"].replace("", "—")})
    return out.set_index(list(keys.values()) + ["turn"])


def lines(t: pd.DataFrame, df: pd.DataFrame, keys: list[str], label: Callable[[tuple], str]) -> list[str]:
    """Per group: how the server used the tools, and what answering a tool's result costs against a question."""
    out = []
    if t.empty:
        return out
    for key, g in t.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        q = g[g["turn_kind"] == QUESTION]
        if q.empty:
            continue
        r = q.iloc[0]
        parts = [f"the server called a tool on {r['called']} of {r['n']} questions it answered"
                 if r["n"] else "no question was answered"]
        if r["with_calls"]:
            parts.append(f"{int(g['valid'].sum())} of {int(g['with_calls'].sum())} turns with calls had valid "
                         "arguments" + (f" (first problem: {g['first_problem'][g['first_problem'] != ''].iloc[0]})"
                                        if (g["first_problem"] != "").any() else ""))
        if r["expected_known"]:
            parts.append(f"{r['as_expected']} of {r['expected_known']} questions called what the dataset's own "
                         "answer called")
        failed, text = int(g["parse_failed"].sum()), int(g["unparsed"].sum() - g["parse_failed"].sum())
        if failed:
            parts.append(f"**the server could not parse {failed} tool calls the model wrote, and failed those "
                         "requests** (each ended its conversation)")
        if text:
            parts.append(f"**{text} answers wrote a tool call as text the server did not parse**")
        if g["cut"].sum():
            parts.append(f"{int(g['cut'].sum())} questions ran out of tool rounds")
        parts.append(_result_cost(df, dict(zip(keys, key))))
        out.append(f"- **{label(key)}**: " + "; ".join(p for p in parts if p) + ".")
    return out


def _result_cost(df: pd.DataFrame, where: dict[str, Any]) -> str:
    g = df
    for k, v in where.items():
        g = g[g[k] == v]
    q, t = g[col(g, "turn_kind") == QUESTION], g[col(g, "turn_kind") == TOOL_RESULT]
    if t.empty:
        return "no turn answered a tool's result"
    row = compare_samples(col(q, "ttft_s").tolist(), col(t, "ttft_s").tolist(), "lower")
    r = row.ratio
    base = (f"turns answering a tool's result had TTFT {SECONDS.estimate(est(col(t, 'ttft_s')))} against the "
            f"questions' {SECONDS.estimate(est(col(q, 'ttft_s')))}")
    if not math.isfinite(r.value) or not r.has_ci:
        return f"{base} (too few turns for a CI of their ratio)"
    verdict = "slower" if r.lo > 1 else "faster" if r.hi < 1 else "no difference the data can show"
    return f"{base}: {RATIO.ci(r.value, r.lo, r.hi)}, {verdict}"
