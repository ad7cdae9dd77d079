"""Reading what a run recorded: one phase's trials."""

from __future__ import annotations

import pandas as pd


def phase_rows(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """The trials of phase ``name`` (none, with the same columns, when the run recorded no phases)."""
    return df[df["phase"] == name] if len(df) and "phase" in df else df.iloc[0:0]
