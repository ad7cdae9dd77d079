"""Each server's first request from a cold disk: the model unloaded everywhere, its memory released, the file
dropped from the server host's page cache (where the host is seen), then one request straight to it."""

from __future__ import annotations

import pandas as pd

from perfkit.core import events as E
from perfkit.servers.control import Unknown

from ..phase_run import PhaseRun
from ..records import phase_rows

# Below this share of the model file in the page cache at the send, the first request is a cold-disk figure.
COLD_RESIDENCY = 0.05


def measure(run: PhaseRun) -> None:
    seen = 0
    why_not: list[str] = []
    for i, s in enumerate(run.fleet.servers):
        nat = run.native(i) if s.control is not None else None
        if nat is None:
            why_not.append(f"{s.name}: " + ("only its API is seen" if s.control is None else
                                            "its API can't unload the model"))
            continue
        nat.close()
        try:
            s.control.file_cache(run.model)
        except Unknown as e:
            run.emit(E.ColdDiskUnknown, server=s.name, why=str(e))
            why_not.append(f"{s.name}: {e}")
            continue
        seen += 1
        unload_everywhere(run)
        before = s.control.file_cache(run.model, "evict")
        run.one(run.direct[i], f"cold_disk/{s.name}", phase="cold_disk", target="direct", server=s.name,
                cache_state="cold_disk", file_resident_before=before, state_verified=before < COLD_RESIDENCY)
    if not seen:
        only_api = all(s.control is None for s in run.fleet.servers)
        run.skip("cold_disk", "unknown, because " + (
            "no server's host is seen (a server seen only through its API: give fleet.hosts with a cluster to have "
            "perfkit's agent on each host)" if only_api else "no server's model file could be evicted: "
            + "; ".join(why_not)))


def unload_everywhere(run: PhaseRun) -> None:
    """The model unloaded on every server and its memory released: a file another server still maps (servers on
    one host share it) can't leave the page cache."""
    for i, s in enumerate(run.fleet.servers):
        nat = run.native(i)
        if nat is not None:
            nat.unload(run.model)
            nat.close()
            if s.control is not None:
                try:
                    s.control.wait_memory_released(run.model)
                except Unknown:
                    pass


def cold_disk_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per server: its first request after the model was unloaded and its file evicted from its host's page cache."""
    g = phase_rows(df, "cold_disk")
    if g.empty:
        return pd.DataFrame()
    return pd.DataFrame([{"server": r["server"], "ok": bool(r["ok"]),
                          "file_in_page_cache": r.get("file_resident_before"),
                          "cold": bool(r.get("state_verified", r.get("file_resident_before", 1) < COLD_RESIDENCY)),
                          "ttft_s": r.get("ttft_s"), "load_s": r.get("load_s"), "e2e_s": r.get("e2e_s"),
                          "error": r.get("error")} for _, r in g.iterrows()])
