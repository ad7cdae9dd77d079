"""Named measurement windows over the samplers' data (zeus-style): energy, means and maxima of a
request, a phase or anything between two instants on the request clock, idle-subtracted on demand."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from perfkit.core.clock import now_ns
from perfkit.core.events import IdleBaseline
from perfkit.core.records import RequestRecord
from perfkit.sampling._periodic import PeriodicSampler
from perfkit.sampling.gpu import GpuSampler
from perfkit.sampling.system import SystemSampler

_MEAN_MAX = ("gpu_util_pct", "gpu_mem_util_pct", "power_w", "gpu_mem_used_bytes", "server_gpu_mem_bytes",
             "sm_clock_mhz", "temperature_c", "server_cpu_pct", "server_rss_bytes", "host_cpu_pct", "other_cpu_pct",
             "steal_pct", "client_cpu_pct",
             # the server's host and the server's own metrics, from telemetry (exporters, Prometheus)
             "server_host_cpu_pct", "server_host_mem_used_bytes", "server_requests_running", "server_requests_waiting",
             "server_kv_cache_usage_ratio", "server_kv_cache_tokens", "server_busy_slots_per_decode")
_PER_GPU = ("gpu_util_pct", "power_w", "gpu_mem_used_bytes", "server_gpu_mem_bytes")  # summed (util: averaged)
_COUNTERS = ("server_prompt_tokens_total", "server_prompt_tokens_cached_total", "server_tokens_predicted_total",
             "server_prefix_cache_hits_tokens_total", "server_prefix_cache_queries_tokens_total",
             "server_spec_draft_tokens_total", "server_spec_accepted_tokens_total")

# A window is noisy when the rest of the machine competed with the server and the client: other
# processes using more than a quarter of a core on average, or the hypervisor stealing > 5%.
NOISE_OTHER_CPU_PCT = 25.0
# A GPU holds the server when its used memory is at least this much (and this share of the GPU): a loaded model
# takes gigabytes, an idle GPU's driver a few hundred MiB.
HOLDS_MODEL_BYTES = 2**30
HOLDS_MODEL_SHARE = 0.05
NOISE_STEAL_PCT = 5.0


def noisy(other_cpu_pct_mean: float | None, steal_pct_mean: float | None) -> bool:
    """Whether a window's outside load makes its timings suspect (thresholds above)."""
    return bool((other_cpu_pct_mean or 0) > NOISE_OTHER_CPU_PCT or (steal_pct_mean or 0) > NOISE_STEAL_PCT)


@dataclass
class Window:
    """What the hardware did between ``t_start_ns`` and ``t_end_ns``.

    ``energy_j``: GPU energy summed over GPUs (J), from the energy counter's difference where the
    GPU has one, else power integrated over time (``energy_method`` says which); ``None`` without
    GPU. ``energy_idle_subtracted_j`` removes the idle baseline's power × duration when one was
    measured. ``stats`` holds ``<metric>_mean`` / ``<metric>_max`` and ``<counter>_delta`` (a server's token
    counters); ``server_read_bytes`` is what the server read from disk in the window, ``server_host_read_bytes``
    what its host's disks read (node exporter). ``gpu_source``: where the GPU readings came from (``gpu``:
    NVML here; ``prometheus``, ``scrape``); ``per_gpu``: GPU index → its own means; ``server_gpus``: the GPUs the
    sums and means are over (comma-separated indexes) and ``server_gpus_how`` how they were told from the host's
    others; ``unknown``: what could not be measured in this window and why (a window shorter than two readings of
    a source, GPUs of which none is known to hold the server).
    """

    name: str
    t_start_ns: int
    t_end_ns: int
    duration_s: float
    energy_j: float | None = None
    energy_method: str | None = None
    energy_idle_subtracted_j: float | None = None
    server_read_bytes: int | None = None
    server_host_read_bytes: int | None = None
    n_samples: int = 0
    gpu_source: str | None = None
    server_gpus: str | None = None
    server_gpus_how: str | None = None
    stats: dict[str, float] = field(default_factory=dict)
    per_gpu: dict[int, dict[str, float]] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("stats"))
        d.pop("per_gpu")
        for i, vals in self.per_gpu.items():
            d.update({f"gpu{i}_{k}": v for k, v in vals.items()})
        unknown = d.pop("unknown")
        d["unknown_because"] = "; ".join(f"{k}: {v}" for k, v in unknown.items()) or None
        return d


def _interp(t: np.ndarray, y: np.ndarray, at: float) -> float:
    """``y`` at ``at``, linear between readings and extended along the nearest two beyond them: a counter read
    coarsely (a scrape every few seconds) must not stop at its last reading before a window's end."""
    if len(t) >= 2 and (at > t[-1] or at < t[0]):
        i = (-2, -1) if at > t[-1] else (0, 1)
        (t0, t1), (y0, y1) = t[list(i)], y[list(i)]
        beyond = at - t1 if at > t[-1] else t0 - at
        if t1 <= t0 or beyond > t1 - t0:
            return math.nan  # further out than one reading's gap: a guess, not a measurement
        slope = (y1 - y0) / (t1 - t0)
        return float(y1 + slope * beyond) if at > t[-1] else float(y0 - slope * beyond)
    return float(np.interp(at, t, y))


def _gpu_keys(df: pd.DataFrame) -> pd.Series:
    """One key per GPU: its host and index ("gpu-a:0"), so two hosts' GPU 0 never mix."""
    host = df["gpu_host"].fillna("") if "gpu_host" in df else pd.Series("", index=df.index)
    return host.astype(str) + ":" + df["gpu"].astype("Int64").astype(str)


class Monitor:
    """Runs a GPU and a system sampler together and answers questions about windows of time.

    Args:
        interval_s: sampling interval for both samplers (default 0.1 s).
        server_pids: callable returning the server's root pid(s), e.g. ``lambda: [engine.proc.pid]``.
        gpu / system: turn a sampler off.
        store: a ``RunStore``; samples are appended to it on ``flush()`` and ``stop()``.
    """

    def __init__(self, interval_s: float = 0.1, server_pids=None, *, gpu: bool = True, system: bool = True,
                 store=None, telemetry: Sequence[PeriodicSampler] = (), server_gpus: Sequence[int] | None = None):
        self.interval_s = interval_s
        # The server's GPUs among those telemetry selects, when the parameters name them (telemetry.gpus).
        self.server_gpus = sorted(set(server_gpus)) if server_gpus is not None else None
        self._server_pids = server_pids
        self.system = SystemSampler(interval_s, server_pids) if system else None
        self.gpu = GpuSampler(interval_s, self._all_pids if server_pids else None) if gpu else None
        self.telemetry = list(telemetry)
        self.samplers = [s for s in (self.gpu, self.system) if s is not None] + self.telemetry
        self.store = store
        self.idle_power_w: dict[int, float] | None = None
        self.windows: list[Window] = []

    def _all_pids(self) -> list[int]:
        return self.system.tree_pids() if self.system else list(self._server_pids())

    @property
    def unavailable(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for s in self.samplers:
            out.update(s.unavailable)
        return out

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpu and self.gpu.handles)

    def sources(self) -> list[dict[str, Any]]:
        """Where the readings come from, for the manifest: NVML and psutil here, and each telemetry source with
        its origin, labels, resolution and the hosts and GPUs it has seen."""
        out: list[dict[str, Any]] = []
        if self.gpu is not None and self.gpu.handles:
            out.append({"source": "gpu", "origin": "NVML on this host", "resolution_s": self.interval_s,
                        "gpus": {str(d["gpu"]): d["name"] for d in self.gpu.devices}})
        if self.system is not None:
            out.append({"source": "system", "origin": "psutil on this host", "resolution_s": self.interval_s})
        for s in self.telemetry:
            out += s.describe()
        return out

    def telemetry_gpus(self) -> tuple[str, dict[int, str]] | None:
        """(source, GPU index → name) of the first telemetry source that has named GPUs (the server host's)."""
        for s in self.telemetry:
            names = {int(i): n for i, n in (s.describe()[0].get("gpus") or {}).items()} if s.describe() else {}
            if names:
                return s.source, names
        return None

    def _gpu_source(self, df: pd.DataFrame) -> str | None:
        """The one source whose GPU readings a window uses: NVML when it sees the server's GPUs, else the first
        telemetry source with GPU readings (two views of one GPU would count its energy twice)."""
        if "gpu" not in df or "source" not in df:
            return None
        have = set(df.loc[df["gpu"].notna(), "source"].unique())
        if "gpu" in have and self.gpu is not None and (self.gpu.server_gpus or self.gpu.pids is None):
            return "gpu"
        for s in self.telemetry:
            if s.source in have:
                return s.source
        return "gpu" if "gpu" in have else None

    def _telemetry_server_gpus(self, w: Window, gin: pd.DataFrame) -> set[str]:
        """Which of the GPUs a telemetry source reads hold the server: those the parameters name, the only one,
        or those whose memory holds a model. Never an average over a host's idle GPUs: where none is known, the
        sums and means are left out (each GPU keeps its own figures, ``per_gpu``) and the window says why."""
        if gin.empty:
            return set()
        keys = _gpu_keys(gin)
        every = sorted(set(keys))
        index = {k: int(k.rsplit(":", 1)[-1]) for k in every}
        if self.server_gpus is not None:
            keep = {k for k in every if index[k] in self.server_gpus}
            how = "named in the parameters (telemetry.gpus)"
            if not keep:
                w.unknown["gpu"] = (f"the GPUs named in telemetry.gpus ({', '.join(map(str, self.server_gpus))}) are "
                                    f"not among those the telemetry reads ({', '.join(str(index[k]) for k in every)})")
        elif len(every) == 1:
            keep, how = set(every), "the only GPU the telemetry reads"
        else:
            keep = set()
            if "gpu_mem_used_bytes" in gin:
                used = gin.groupby(keys)["gpu_mem_used_bytes"].mean()
                total = gin.groupby(keys)["gpu_mem_total_bytes"].mean() if "gpu_mem_total_bytes" in gin else None
                for k, u in used.items():
                    share_ok = total is None or not (total.get(k) or 0) or u >= HOLDS_MODEL_SHARE * total[k]
                    if u >= HOLDS_MODEL_BYTES and share_ok:
                        keep.add(k)
            how = "the GPUs whose memory holds a model (at least 1 GiB used)"
            if not keep:
                w.unknown["gpu"] = (f"which of the {len(every)} GPUs the telemetry reads holds the server is unknown "
                                    "(none holds a model's memory): each GPU's own figures are shown, never their "
                                    "average; name them with telemetry.gpus")
        if keep:
            w.server_gpus = ",".join(str(index[k]) for k in sorted(keep, key=index.get))
            w.server_gpus_how = how
        return keep

    def start(self) -> "Monitor":
        for s in self.samplers:
            s.start()
        return self

    def stop(self) -> None:
        for s in self.samplers:
            s.stop()
        self.flush()

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def flush(self) -> None:
        if self.store is not None:
            for s in self.samplers:
                self.store.append_samples(s.drain())

    def frame(self, t_from_ns: int | None = None, t_to_ns: int | None = None) -> pd.DataFrame:
        """Samples as a DataFrame, optionally only those between two instants (bisected, cheap)."""
        import bisect

        rows: list[dict] = []
        for s in self.samplers:
            data = list(s.samples)
            if t_from_ns is not None:
                keys = [r["t_ns"] for r in data]
                data = data[bisect.bisect_left(keys, t_from_ns):bisect.bisect_right(keys, t_to_ns)]
            rows += data
        return pd.DataFrame(rows)

    # ---- windows -------------------------------------------------------------------------------
    @contextmanager
    def window(self, name: str) -> Iterator[dict]:
        """``with monitor.window("load") as w: ...`` → ``w["window"]``, also appended to ``self.windows``."""
        holder: dict = {}
        t0 = now_ns()
        try:
            yield holder
        finally:
            holder["window"] = self.measure(name, t0, now_ns())
            self.windows.append(holder["window"])

    def _too_short(self, duration_s: float) -> dict[str, str]:
        """Telemetry sources too coarse for a window: fewer than two readings fit in it."""
        return {s.source: f"too short for {s.resolution_words()} of {s.source}"
                for s in self.telemetry if duration_s < 2 * s.true_resolution_s}

    def _silent(self, df: pd.DataFrame, short: dict[str, str], t0: int, t1: int) -> dict[str, str]:
        """Telemetry sources that failed and gave no reading inside a window long enough for them: the window says
        so, with the source's error, rather than showing the other sources' figures as if complete."""
        seen = set(df.loc[(df["t_ns"] >= t0) & (df["t_ns"] <= t1), "source"].unique()) if len(df) else set()
        out = {}
        for s in self.telemetry:
            if s.source not in short and s.source not in seen and s.errors:
                err = next(iter(s.unavailable.values()), "")
                out[s.source] = f"no reading from {s.source} in this window ({err})"[:300]
        return out

    def measure(self, name: str, t_start_ns: int, t_end_ns: int, *, wait: bool = True) -> Window:
        w = Window(name, t_start_ns, t_end_ns, (t_end_ns - t_start_ns) * 1e-9)
        short = self._too_short(w.duration_s)
        if wait:
            for s in self.samplers:
                if s.source not in short:
                    s.wait_past(t_end_ns)
        # A margin of a few ticks either side lets cumulative counters be interpolated at the edges.
        margin = int(3e9 * max((s.true_resolution_s for s in self.samplers), default=0.1))
        df = self.frame(t_start_ns - margin, t_end_ns + margin)
        if df.empty:
            w.unknown.update(short)
            w.unknown.update(self._silent(df, short, t_start_ns, t_end_ns))
            return w
        w.unknown.update(self._silent(df, short, t_start_ns, t_end_ns))
        if short:
            seen = set(df["source"].unique())
            w.unknown.update({k: v for k, v in short.items() if k in seen})
            df = df[~df["source"].isin(short)]
        w.gpu_source = self._gpu_source(df)
        all_gpus = None
        if w.gpu_source is not None:  # the other sources' GPU rows out: one view of each GPU
            df = df[df["gpu"].isna() | (df["source"] == w.gpu_source)]
            if w.gpu_source not in ("gpu", "agent"):  # telemetry: the host's GPUs, of which the server's are some
                all_gpus = df[df["gpu"].notna()]
                keep = self._telemetry_server_gpus(w, all_gpus[(all_gpus["t_ns"] >= t_start_ns)
                                                             & (all_gpus["t_ns"] <= t_end_ns)])
                df = df[df["gpu"].isna() | _gpu_keys(df).isin(keep)]
        inside = df[(df["t_ns"] >= t_start_ns) & (df["t_ns"] <= t_end_ns)]
        w.n_samples = len(inside)
        for m in _MEAN_MAX:
            if m in inside and inside[m].notna().any():
                col = inside[m]
                if m.startswith("server_") and not m.startswith("server_host") and m != "server_gpu_mem_bytes":
                    # the server's own metrics: one reading per tick and endpoint, several models add up
                    g = inside[inside[m].notna()].groupby("t_ns")[m]
                    col = g.max() if m in ("server_kv_cache_usage_ratio", "server_busy_slots_per_decode") else g.sum()
                if m in _PER_GPU and "gpu" in inside:
                    # Several GPUs: power and memory add up; utilization is averaged per GPU. Only the GPU
                    # sampler's ticks: a plain sum() made every system-sampler tick a 0 W reading, which
                    # halved mean power (measured on an H200: 322 W shown, 686 W from the energy counter).
                    g = inside[inside["gpu"].notna()].groupby("t_ns")[m]
                    col = g.sum(min_count=1) if m != "gpu_util_pct" else g.mean()
                    if col.isna().all():
                        continue
                w.stats[f"{m}_mean"] = float(col.mean())
                w.stats[f"{m}_max"] = float(col.max())
        if w.gpu_source is not None:
            gdf = df[df["gpu"].notna()]
            gin = (all_gpus if all_gpus is not None else inside)
            gin = gin[gin["gpu"].notna() & (gin["t_ns"] >= t_start_ns) & (gin["t_ns"] <= t_end_ns)]
            several_hosts = "gpu_host" in gin and gin["gpu_host"].nunique() > 1
            for key, g in gin.groupby(_gpu_keys(gin)):
                i = key if several_hosts else int(str(key).rsplit(":", 1)[-1])
                w.per_gpu[i] = {f"{m}_mean": float(g[m].mean()) for m in _PER_GPU if m in g and g[m].notna().any()}
            if not gdf.empty:
                self._energy(w, gdf)
        for col_name, attr in (("server_read_bytes", "server_read_bytes"), ("server_host_read_bytes", "server_host_read_bytes")):
            if col_name in df:
                sel = df[df[col_name].notna()]
                if len(sel) >= 2:
                    t, y = sel["t_ns"].to_numpy(float), sel[col_name].to_numpy(float)
                    d = _interp(t, y, t_end_ns) - _interp(t, y, t_start_ns)
                    if math.isfinite(d):
                        setattr(w, attr, int(max(0.0, d)))
        for c in _COUNTERS:
            if c in df and df[c].notna().sum() >= 2:
                sel = df[df[c].notna()].groupby("t_ns")[c].sum()
                t, y = sel.index.to_numpy(float), sel.to_numpy(float)
                d = _interp(t, y, t_end_ns) - _interp(t, y, t_start_ns)
                if math.isfinite(d):
                    w.stats[f"{c}_delta"] = float(max(0.0, d))
        return w

    def _energy(self, w: Window, gdf: pd.DataFrame) -> None:
        if w.gpu_source == "gpu":
            # Only the GPUs the server uses: another job's GPU next to it is not this model's energy.
            if self.gpu is None or self.gpu.pids is None or not self.gpu.server_gpus:
                return
            gdf = gdf[gdf["gpu"].isin(self.gpu.server_gpus)]
        # Telemetry: every GPU the labels select (the user's labels name the server's host and GPUs).
        gdf = gdf.reindex(columns=list(dict.fromkeys([*gdf.columns, "energy_j", "power_w"])))
        if gdf.empty:
            return
        total, methods = 0.0, set()
        for _, g in gdf.groupby(_gpu_keys(gdf)):
            g = g.sort_values("t_ns")
            if g["energy_j"].notna().sum() >= 2:
                e = g[g["energy_j"].notna()]
                # An exporter that refreshes slower than it is read repeats its last value: only the reading where
                # the counter moved is a measurement (at that instant, or up to a read later).
                e = e[e["energy_j"].diff().fillna(1.0) != 0]
                if len(e) < 2:
                    w.unknown.setdefault("energy", "the energy counter did not move twice around the window")
                    return
                te, ye = e["t_ns"].to_numpy(float), e["energy_j"].to_numpy(float)
                d = _interp(te, ye, w.t_end_ns) - _interp(te, ye, w.t_start_ns)
                if not math.isfinite(d):  # the counter's readings stop short of the window: no energy figure
                    w.unknown.setdefault("energy", "the energy counter's readings do not reach both ends of the window")
                    return
                total += d
                methods.add("counter")
            elif g["power_w"].notna().sum() >= 2:
                p = g[g["power_w"].notna()]
                tp, yp = p["t_ns"].to_numpy(float), p["power_w"].to_numpy(float)
                grid = np.linspace(w.t_start_ns, w.t_end_ns, 64)
                total += float(np.trapezoid(np.interp(grid, tp, yp), grid * 1e-9))
                methods.add("power_integral")
            else:
                return
        w.energy_j = total
        w.energy_method = "+".join(sorted(methods))
        if self.idle_power_w:
            used = (self.gpu.server_gpus if w.gpu_source == "gpu" and self.gpu is not None
                    else set(gdf["gpu"].astype(int)))
            idle_w = sum(p for g, p in self.idle_power_w.items() if g in used)
            w.energy_idle_subtracted_j = total - idle_w * w.duration_s

    def measure_idle(self, seconds: float = 3.0) -> dict[int, float]:
        """Measure each GPU's idle power (W) over ``seconds``; later windows subtract it."""
        t0 = now_ns()
        time.sleep(seconds)
        t1 = now_ns()
        for s in self.samplers:
            s.wait_past(t1)
        df = self.frame()
        self.idle_power_w = {}
        src = self._gpu_source(df) if not df.empty else None
        if src is not None and "power_w" in df:
            idle = df[(df["source"] == src) & df["gpu"].notna() & (df["t_ns"] >= t0) & (df["t_ns"] <= t1)]
            self.idle_power_w = {int(g): float(x["power_w"].mean()) for g, x in idle.groupby("gpu")}
        if self.store is not None:
            self.store.emit(IdleBaseline(power_w=self.idle_power_w, duration_s=seconds))
        return self.idle_power_w

    # ---- requests ------------------------------------------------------------------------------
    def request_summaries(self, recs: list[RequestRecord]) -> list[dict[str, Any]]:
        """:meth:`request_summary` of many finished requests (a series): the samplers are waited for once,
        past the last end, not once per request."""
        ends = [r.t_end_ns for r in recs if r.t_end_ns]
        if ends:
            for s in self.samplers:
                s.wait_past(max(ends))
        return [self.request_summary(r, wait=False) for r in recs]

    def request_summary(self, rec: RequestRecord, *, wait: bool = True) -> dict[str, Any]:
        """Flat resource figures for a trial row: the request's own window (energy, power, utilization,
        memory, CPU of the server, the client and everything else), energy per output token, noisy or not."""
        w = self.measure("request", rec.t_send_ns, rec.t_end_ns, wait=wait)
        out = {f"res_{k}": v for k, v in w.as_dict().items() if k not in ("name", "t_start_ns", "t_end_ns")}
        if out.get("res_energy_j") is not None and rec.output_tokens:
            out["res_energy_per_token_j"] = out["res_energy_j"] / rec.output_tokens
        if out.get("res_energy_idle_subtracted_j") is not None and rec.output_tokens:
            out["res_energy_per_token_idle_subtracted_j"] = out["res_energy_idle_subtracted_j"] / rec.output_tokens
        if out.get("res_energy_per_token_j") is None and w.unknown and self.telemetry:
            out["res_energy_unknown_because"] = w.as_dict()["unknown_because"]
        out["res_noisy"] = noisy(out.get("res_other_cpu_pct_mean"), out.get("res_steal_pct_mean"))
        self.flush()
        return out
