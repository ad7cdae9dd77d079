"""The proxy's overhead: direct and proxied requests to one server in alternating order, with proxy buffering off
and on, and whether buffering holds the first token back until the response is complete."""

from __future__ import annotations

import math

import pandas as pd

from perfkit.analysis import stats
from perfkit.analysis.requests import ci_cell, est, measured

from ..phase_run import PhaseRun
from ..records import phase_rows

def _modes(managed: bool) -> list[tuple[str, bool | None, list[str] | None]]:
    """(label, proxy_buffering, headers nginx ignores); a user's proxy is measured as it is configured."""
    if not managed:
        return [("as configured", None, None)]
    # "on" is proxy_buffering as the seed writes it; a server's X-Accel-Buffering: no still turns it off per
    # response, so "on, forced" also ignores that header: what buffering really does to a stream.
    return [("off", False, []), ("on", True, []), ("on, X-Accel-Buffering ignored", True, ["X-Accel-Buffering"])]


def measure(run: PhaseRun) -> None:
    for label, buffering, ignore in _modes(run.fleet.managed):
        if buffering is not None:
            run.fleet.reconfigure(buffering=buffering, ignore_headers=ignore,
                                  upstreams=[run.fleet.nginx.cfg.upstreams[0]])
        for rep in range(run.cfg.overhead_reps):
            # Alternating which goes first: a drift in the server's state lands on both sides alike.
            order = [("direct", run.direct[0]), ("proxy", run.proxy)]
            for target, runner in (order if rep % 2 == 0 else order[::-1]):
                run.one(runner, f"overhead/{label}/{target}/{rep}", phase="overhead", target=target, buffering=label,
                        rep=rep)
    if run.fleet.managed:
        run.restore_proxy()


def overhead_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per buffering mode: TTFT and e2e direct vs through the proxy, the added time (Hodges–Lehmann shift,
    Moses CI), and whether the first token was held back (proxy TTFT close to its e2e)."""
    ok = measured(phase_rows(df, "overhead"))
    rows = []
    for mode, g in ok.groupby("buffering", sort=False):
        d, p = g[g["target"] == "direct"], g[g["target"] == "proxy"]
        add_ttft, add_e2e = stats.shift(p["ttft_s"], d["ttft_s"]), stats.shift(p["e2e_s"], d["e2e_s"])
        gap = float(d["e2e_s"].median() - d["ttft_s"].median())
        held = bool(p["ttft_s"].median() > d["ttft_s"].median() + 0.5 * gap) if gap > 0 else None
        rows.append({"buffering": mode, "n": min(len(d), len(p)), "added_ttft": add_ttft,
                     "ttft_direct": ci_cell(est(d["ttft_s"])),
                     "ttft_proxy": ci_cell(est(p["ttft_s"])), "added_ttft_s": add_ttft.value,
                     "added_ttft_lo": add_ttft.lo, "added_ttft_hi": add_ttft.hi, "added_e2e_s": add_e2e.value,
                     "added_e2e_lo": add_e2e.lo, "added_e2e_hi": add_e2e.hi,
                     "first_token_held_back": held,
                     "proxy_ttft_share_of_e2e": float((p["ttft_s"] / p["e2e_s"]).median()) if len(p) else math.nan})
    return pd.DataFrame(rows)
