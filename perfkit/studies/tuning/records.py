"""The candidates as the store recorded them: a resumed search, the race and the analysis all read them from
here, never from memory."""

from __future__ import annotations

import pandas as pd

from perfkit.core.events import TuningCandidate, records_of
from perfkit.studies.base import StudyContext


def recorded_candidates(ctx: StudyContext) -> dict[str, dict]:
    """key → the candidate as recorded (its settings, what the server ran, the looks measured, merged into)."""
    out: dict[str, dict] = {}
    for r in records_of(ctx.store.events(), TuningCandidate):
        d = out.setdefault(r["key"], {"key": r["key"], "settings": r["settings"], "looks": 0, "merged_into": None,
                                      "effective": r.get("effective"), "all_applied": None, "error": ""})
        if isinstance(r.get("merged_into"), str):
            d["merged_into"] = r["merged_into"]
        if isinstance(r.get("all_applied"), bool):
            d["all_applied"] = r["all_applied"]
        if isinstance(r.get("error"), str) and r["error"]:
            d["error"] = r["error"]
        if r.get("look") is not None:
            d["looks"] = max(d["looks"], int(r["look"]))
    return out


def candidate_rows(ctx: StudyContext, key: str) -> pd.DataFrame:
    """The candidate's search and race requests (its ``cand/`` series), not the winner's later phases."""
    df = ctx.store.trials()
    if df.empty or "candidate" not in df:
        return df.iloc[0:0]
    return df[(df["candidate"] == key) & df["series"].astype(str).str.startswith("cand/")]
