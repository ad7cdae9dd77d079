"""A cold server behind the proxy: the last server's model unloaded, then a series through the proxy; the first
request that lands on the cold one pays the load."""

from __future__ import annotations

import pandas as pd

from perfkit.core import events as E
from perfkit.analysis.requests import ci_cell, est, measured

from ..phase_run import PhaseRun
from ..records import phase_rows
from ..results import ServerSetup
from ..upstreams import served_by, server_names


def measure(run: PhaseRun) -> None:
    servers = run.fleet.servers
    last = len(servers) - 1
    nat = run.native(last)
    if nat is None or last == 0:
        run.skip("cold_upstream", "unknown, because " + ("the servers' API can't unload a model"
                                                         if nat is None else "there is only one server"))
        return
    nat.unload(run.model)
    nat.close()
    run.emit(E.ServerUnloaded, server=servers[last].addr)
    n = max(2 * len(servers), 6)
    run.proxy.closed_loop(run.model, len(servers), n, series="cold_upstream/proxy", sampling=run.sampling,
                          prompt_words=run.cfg.prompt_words, tags={"phase": "cold_upstream", "target": "proxy",
                                                                   "cold_server": servers[last].addr})


def cold_upstream_table(df: pd.DataFrame, servers: list[ServerSetup]) -> pd.DataFrame:
    """Per server that answered through the proxy after the last one was unloaded: its first and typical TTFT
    (the cold one's first request pays the load)."""
    g = measured(phase_rows(df, "cold_upstream"))
    if g.empty or "served_by" not in g:
        return pd.DataFrame()
    cold = g["cold_server"].iloc[0]
    names = server_names(servers)
    g = g.assign(server=g["served_by"].map(served_by).map(lambda a: names.get(a, a)))
    rows = []
    for name, h in g.groupby("server"):
        h = h.sort_values("t_send_ns")
        rows.append({"server": name, "cold": name == cold, "requests": len(h),
                     "first_ttft_s": float(h["ttft_s"].iloc[0]), "ttft_p50": ci_cell(est(h["ttft_s"])),
                     "ttft_max_s": float(h["ttft_s"].max())})
    return pd.DataFrame(rows)
