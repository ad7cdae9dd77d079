"""What perfkit reads from the Prometheus exposition format, declared once: which exporter series (NVIDIA's
DCGM exporter, the node exporter, and each server kind's own ``/metrics``, which the kind registers with
:func:`register`) become which sample column, in which unit, and how several label sets of one series combine. The direct scrape and the Prometheus source both turn
readings into sample rows here, so a figure reads the same column whichever way it came.

Parsing the text format is ``prometheus_client``'s (:func:`parse`), not ours.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

GROUPS = ("gpu", "host", "server")


@dataclass(frozen=True)
class Series:
    """One exporter series → one sample column.

    ``scale`` converts to the column's unit (MiB → bytes, mJ → J); ``combine``: how label sets other than
    the GPU's add up within one reading (``sum`` of requests or bytes, ``max`` of a ratio); ``group``: the
    GPU's (one row per GPU), the host's or the server's."""

    name: str
    column: str
    group: str
    scale: float = 1.0
    combine: str = "sum"


MIB = 2 ** 20
SERIES: tuple[Series, ...] = (
    # NVIDIA DCGM exporter (dcgm-exporter's default counters; field names from dcgm_fields.h)
    Series("DCGM_FI_DEV_GPU_UTIL", "gpu_util_pct", "gpu"),
    Series("DCGM_FI_DEV_MEM_COPY_UTIL", "gpu_mem_util_pct", "gpu"),
    Series("DCGM_FI_DEV_FB_USED", "gpu_mem_used_bytes", "gpu", MIB),
    Series("DCGM_FI_DEV_FB_FREE", "gpu_mem_free_bytes", "gpu", MIB),
    Series("DCGM_FI_DEV_FB_RESERVED", "gpu_mem_reserved_bytes", "gpu", MIB),
    Series("DCGM_FI_DEV_POWER_USAGE", "power_w", "gpu"),
    Series("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "energy_j", "gpu", 1e-3),  # mJ since the driver loaded
    Series("DCGM_FI_DEV_GPU_TEMP", "temperature_c", "gpu"),
    Series("DCGM_FI_DEV_SM_CLOCK", "sm_clock_mhz", "gpu"),
    Series("DCGM_FI_DEV_MEM_CLOCK", "mem_clock_mhz", "gpu"),
    # node exporter: the server host's memory and disk (CPU busy is derived from node_cpu_seconds_total)
    Series("node_memory_MemAvailable_bytes", "server_host_mem_available_bytes", "host"),
    Series("node_memory_MemTotal_bytes", "server_host_mem_total_bytes", "host"),
    Series("node_disk_read_bytes_total", "server_host_read_bytes", "host"),
)
NODE_CPU = "node_cpu_seconds_total"
BY_NAME: dict[str, Series] = {s.name: s for s in SERIES}


def register(series: Iterable[Series]) -> None:
    """A server kind's own series (its ``/metrics`` names → perfkit's ``server_*`` columns), at its import."""
    global SERIES
    for x in series:
        if x.group != "server":
            raise ValueError(f"{x.name}: a server kind registers server series, not {x.group!r} ones")
        if x.name not in BY_NAME:
            SERIES = (*SERIES, x)
        BY_NAME[x.name] = x


def names_of(group: str) -> list[str]:
    """The exporter series of one group (``gpu``, ``host``, ``server``)."""
    return [s.name for s in SERIES if s.group == group] + ([NODE_CPU] if group == "host" else [])


def group_of(name: str) -> str | None:
    return "host" if name == NODE_CPU else (BY_NAME[name].group if name in BY_NAME else None)


Reading = tuple[str, Mapping[str, str], float]  # (series name, labels, value)


def parse(text: str) -> list[Reading]:
    """The readings of an exposition-format page (``prometheus_client``'s parser), only the series perfkit
    reads; ValueError when the page is not in the format."""
    from prometheus_client.parser import text_string_to_metric_families

    out: list[Reading] = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            name = s.name
            if name not in BY_NAME and name.endswith("_total") and name[:-6] in BY_NAME:
                name = name[:-6]  # the parser adds _total to a counter that lacks it (DCGM's energy counter)
            if name in BY_NAME or name == NODE_CPU:
                out.append((name, s.labels, float(s.value)))
    return out


def gpu_index(labels: Mapping[str, str]) -> int | None:
    """The GPU a DCGM series belongs to: its ``gpu`` label, else the digits of ``device`` (nvidia0)."""
    for key in ("gpu", "GPU_I_ID", "device"):
        m = re.search(r"\d+", str(labels.get(key, "")))
        if m:
            return int(m.group())
    return None


class Converter:
    """Readings of one source → sample rows; keeps the last CPU counters, so CPU busy is a rate between two
    readings of the same source.

    A GPU is one row per reading, keyed by its host (``Hostname``, else ``instance``) *and* its index: two hosts'
    GPU 0 are two GPUs (``gpu_host`` on the row). The converter also watches when values *change*: an exporter
    that refreshes its readings every N seconds (dcgm-exporter's collect interval, 30 s by default) answers every
    faster scrape with the same cached values, so its true resolution is the spacing of changes, not of scrapes
    (:attr:`change_interval_s`).

    Args:
        source: the ``source`` every row carries (``prometheus``, ``scrape``, ``engine``).
        resolution_s: seconds between the source's readings (its scrape interval), on every row.
        origin: where the readings came from (an URL, a Prometheus selector), on every row.
    """

    CHANGES_KEPT = 64  # per value: enough for a median, bounded over a run of hours

    def __init__(self, source: str, resolution_s: float, origin: str = ""):
        self.source, self.resolution_s, self.origin = source, resolution_s, origin
        self._cpu_last: tuple[float, float] | None = None  # (busy+idle total, idle) seconds
        self.gpu_names: dict[int, str] = {}
        self.hosts: set[str] = set()
        self.gpu_hosts: set[str] = set()  # hosts whose GPU series were read
        self._last: dict[tuple, tuple[float, int]] = {}  # value key → (value, t_ns of its last change)
        self._gaps: dict[tuple, deque] = {}

    def _watch(self, key: tuple, value: float, t_ns: int) -> None:
        last = self._last.get(key)
        if last is None:
            self._last[key] = (value, t_ns)
        elif value != last[0] and t_ns > last[1]:
            self._gaps.setdefault(key, deque(maxlen=self.CHANGES_KEPT)).append((t_ns - last[1]) * 1e-9)
            self._last[key] = (value, t_ns)

    @property
    def change_interval_s(self) -> float | None:
        """How often the source's values really change: per value, the median spacing of its changes; the source's
        is the shortest of those (a counter changes at every refresh; a steady gauge never does and is ignored).
        GPU readings only: the exporters that cache between refreshes are GPU exporters, and a server's own counters
        change only when requests come. None until some value has changed three times."""
        meds = []
        for gaps in self._gaps.values():
            if len(gaps) >= 2:
                g = sorted(gaps)
                meds.append(g[len(g) // 2])
        return min(meds) if meds else None

    def rows(self, t_ns: int, readings: Iterable[Reading], **extra: Any) -> list[dict[str, Any]]:
        base = {"source": self.source, "t_ns": t_ns, "resolution_s": self.resolution_s, "origin": self.origin, **extra}
        gpus: dict[tuple[str, int], dict[str, Any]] = {}
        groups: dict[str, dict[str, float]] = {"host": {}, "server": {}}
        cpu_total = cpu_idle = 0.0
        seen_cpu = False
        for name, labels, value in readings:
            if name == NODE_CPU:
                seen_cpu = True
                cpu_total += value
                if labels.get("mode") in ("idle", "iowait"):
                    cpu_idle += value
                continue
            s = BY_NAME.get(name)
            if s is None or value != value:  # NaN: the exporter had no reading
                continue
            v = value * s.scale
            host = labels.get("Hostname") or labels.get("instance")
            if host:
                self.hosts.add(str(host))
            if s.group == "gpu":
                i = gpu_index(labels)
                if i is None:
                    continue
                if labels.get("modelName"):
                    self.gpu_names[i] = str(labels["modelName"])
                key = (str(host or ""), i)
                if host:
                    self.gpu_hosts.add(str(host))
                gpus.setdefault(key, {})[s.column] = v
                self._watch((key, s.column), v, t_ns)
                continue
            g = groups[s.group]
            if s.column in g:
                g[s.column] = max(g[s.column], v) if s.combine == "max" else g[s.column] + v
            else:
                g[s.column] = v
        out = []
        for (host, i), vals in sorted(gpus.items()):
            if "gpu_mem_used_bytes" in vals and "gpu_mem_free_bytes" in vals:
                vals["gpu_mem_total_bytes"] = (vals["gpu_mem_used_bytes"] + vals["gpu_mem_free_bytes"]
                                               + vals.get("gpu_mem_reserved_bytes", 0.0))
            out.append({**base, "gpu": i, **({"gpu_host": host} if host else {}), **vals})
        host = groups["host"]
        if seen_cpu:
            last, self._cpu_last = self._cpu_last, (cpu_total, cpu_idle)
            if last is not None and cpu_total > last[0]:
                host["server_host_cpu_pct"] = 100.0 * (1 - (cpu_idle - last[1]) / (cpu_total - last[0]))
        if "server_host_mem_available_bytes" in host and "server_host_mem_total_bytes" in host:
            host["server_host_mem_used_bytes"] = host["server_host_mem_total_bytes"] - host["server_host_mem_available_bytes"]
        if host:
            out.append({**base, **host})
        if groups["server"]:
            out.append({**base, **groups["server"]})
        return out
