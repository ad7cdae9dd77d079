"""Reading what a run recorded: one phase's trials, the events of one kind."""

from __future__ import annotations

import pandas as pd


def phase_rows(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """The trials of phase ``name`` (none, with the same columns, when the run recorded no phases)."""
    return df[df["phase"] == name] if len(df) and "phase" in df else df.iloc[0:0]


def events_of(ev: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The events of one kind, only the columns they have."""
    if not len(ev) or "kind" not in ev:
        return pd.DataFrame()
    return ev[ev["kind"] == kind].dropna(axis=1, how="all")
