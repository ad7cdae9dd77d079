"""Named measurement windows over the samplers' data (zeus-style): energy, means and maxima of a
request, a phase or anything between two instants on the request clock, idle-subtracted on demand."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd

from perfkit.core.clock import now_ns
from perfkit.core.records import RequestRecord
from perfkit.sampling.gpu import GpuSampler
from perfkit.sampling.system import SystemSampler

_MEAN_MAX = ("gpu_util_pct", "power_w", "gpu_mem_used_bytes", "server_gpu_mem_bytes", "sm_clock_mhz",
             "temperature_c", "server_cpu_pct", "server_rss_bytes", "host_cpu_pct", "other_cpu_pct", "steal_pct",
             "client_cpu_pct")

# A window is noisy when the rest of the machine competed with the server and the client: other
# processes using more than a quarter of a core on average, or the hypervisor stealing > 5%.
NOISE_OTHER_CPU_PCT = 25.0
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
    measured. ``stats`` holds ``<metric>_mean`` / ``<metric>_max``; ``server_read_bytes`` is
    what the server read from disk in the window.
    """

    name: str
    t_start_ns: int
    t_end_ns: int
    duration_s: float
    energy_j: float | None = None
    energy_method: str | None = None
    energy_idle_subtracted_j: float | None = None
    server_read_bytes: int | None = None
    n_samples: int = 0
    stats: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("stats"))
        return d


def _interp(t: np.ndarray, y: np.ndarray, at: float) -> float:
    return float(np.interp(at, t, y))


class Monitor:
    """Runs a GPU and a system sampler together and answers questions about windows of time.

    Args:
        interval_s: sampling interval for both samplers (default 0.1 s).
        server_pids: callable returning the server's root pid(s), e.g. ``lambda: [engine.proc.pid]``.
        gpu / system: turn a sampler off.
        store: a ``RunStore``; samples are appended to it on ``flush()`` and ``stop()``.
    """

    def __init__(self, interval_s: float = 0.1, server_pids=None, *, gpu: bool = True, system: bool = True,
                 store=None):
        self.interval_s = interval_s
        self._server_pids = server_pids
        self.system = SystemSampler(interval_s, server_pids) if system else None
        self.gpu = GpuSampler(interval_s, self._all_pids if server_pids else None) if gpu else None
        self.samplers = [s for s in (self.gpu, self.system) if s is not None]
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

    def measure(self, name: str, t_start_ns: int, t_end_ns: int, *, wait: bool = True) -> Window:
        if wait:
            for s in self.samplers:
                s.wait_past(t_end_ns)
        w = Window(name, t_start_ns, t_end_ns, (t_end_ns - t_start_ns) * 1e-9)
        # A margin of a few ticks either side lets cumulative counters be interpolated at the edges.
        margin = int(3e9 * max((s.interval_s for s in self.samplers), default=0.1))
        df = self.frame(t_start_ns - margin, t_end_ns + margin)
        if df.empty:
            return w
        inside = df[(df["t_ns"] >= t_start_ns) & (df["t_ns"] <= t_end_ns)]
        w.n_samples = len(inside)
        for m in _MEAN_MAX:
            if m in inside and inside[m].notna().any():
                col = inside[m]
                if m in ("gpu_util_pct", "power_w", "gpu_mem_used_bytes", "server_gpu_mem_bytes") and "gpu" in inside:
                    # Several GPUs: power and memory add up; utilization is averaged per GPU. Only the GPU
                    # sampler's ticks: a plain sum() made every system-sampler tick a 0 W reading, which
                    # halved mean power (measured on an H200: 322 W shown, 686 W from the energy counter).
                    g = inside[inside["gpu"].notna()].groupby("t_ns")[m]
                    col = g.sum(min_count=1) if m != "gpu_util_pct" else g.mean()
                    if col.isna().all():
                        continue
                w.stats[f"{m}_mean"] = float(col.mean())
                w.stats[f"{m}_max"] = float(col.max())
        if "source" in df and (df["source"] == "gpu").any():
            self._energy(w, df[df["source"] == "gpu"])
        if "server_read_bytes" in df:
            sys = df[(df["source"] == "system") & df["server_read_bytes"].notna()]
            if len(sys) >= 2:
                t, y = sys["t_ns"].to_numpy(float), sys["server_read_bytes"].to_numpy(float)
                w.server_read_bytes = int(max(0.0, _interp(t, y, t_end_ns) - _interp(t, y, t_start_ns)))
        return w

    def _energy(self, w: Window, gdf: pd.DataFrame) -> None:
        # Only the GPUs the server uses: another job's GPU next to it is not this model's energy.
        if self.gpu is None or self.gpu.pids is None or not self.gpu.server_gpus:
            return
        gdf = gdf[gdf["gpu"].isin(self.gpu.server_gpus)]
        total, methods = 0.0, set()
        for _, g in gdf.groupby("gpu"):
            g = g.sort_values("t_ns")
            if g["energy_j"].notna().sum() >= 2:
                e = g[g["energy_j"].notna()]
                te, ye = e["t_ns"].to_numpy(float), e["energy_j"].to_numpy(float)
                total += _interp(te, ye, w.t_end_ns) - _interp(te, ye, w.t_start_ns)
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
            idle_w = sum(p for g, p in self.idle_power_w.items() if g in self.gpu.server_gpus)
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
        if not df.empty and "power_w" in df:
            idle = df[(df["source"] == "gpu") & (df["t_ns"] >= t0) & (df["t_ns"] <= t1)]
            self.idle_power_w = {int(g): float(x["power_w"].mean()) for g, x in idle.groupby("gpu")}
        if self.store is not None:
            self.store.event("idle_baseline", power_w=self.idle_power_w, seconds=seconds)
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
        out["res_noisy"] = noisy(out.get("res_other_cpu_pct_mean"), out.get("res_steal_pct_mean"))
        self.flush()
        return out
