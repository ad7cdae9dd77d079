"""The winner's cold start: what keeping the model loaded avoids, and the proxy timeout it needs."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from perfkit.analysis import figures as F
from perfkit.analysis.requests import measured
from perfkit.client.backends import Sampling
from perfkit.core.settings import think_of
from perfkit.measure.runner import Trial
from perfkit.measure.session import Session
from perfkit.studies.base import StudyContext

from .objective import peak_rss
from .params import TuningParams
from .records import recorded_candidates


def measure_cold(ctx: StudyContext, s: Session, winner: str) -> None:
    """The winner's first request after a restart, ``cold_reps`` times: what keeping the model warm avoids."""
    c = ctx.cfg
    settings = recorded_candidates(ctx)[winner]["settings"]
    s.restart(settings)
    s.runner.run([Trial(f"cold/{winner}/rep{i}", c.model, "cold_server", i, False, winner, c.prompt_words,
                        Sampling(c.num_predict, think=think_of(settings)), tags={"candidate": winner, "phase": "cold"})
                  for i in range(c.cold_reps)], desc="tuning: the winner's cold start")


def cold_facts(c: TuningParams, df: pd.DataFrame, winner: str | None) -> dict[str, Any]:
    """The winner's cold start against its warm requests: what keep-alive avoids, and the proxy timeout it needs."""
    if df.empty or "phase" not in df or winner is None:
        return {}
    cold = measured(df[df["phase"] == "cold"])
    warm = measured(df[(df.get("candidate") == winner) & df["series"].astype(str).str.startswith("cand/")])
    if cold.empty:
        return {}
    worst = float(pd.to_numeric(cold["e2e_s"]).max())
    return {"cold_e2e": F.per_request("tuning", "e2e", cold, "e2e_s", where={"setting": winner, "state": "cold_server"}),
            "warm_e2e_s": float(pd.to_numeric(warm["e2e_s"]).median()) if len(warm) else math.nan,
            "load_s": float(pd.to_numeric(cold.get("load_s"), errors="coerce").median()) if "load_s" in cold else math.nan,
            "rss_bytes": peak_rss(warm), "worst_cold_s": worst,
            "proxy_read_timeout_s": max(60, int(math.ceil(worst * 3 / 10.0) * 10))}
