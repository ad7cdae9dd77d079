"""The server host's telemetry from the user's Prometheus: the readings its exporters took (DCGM, node exporter,
the server's own metrics), fetched as raw samples through the HTTP API and put on the run's clock.

Prometheus keeps each scrape's timestamp, so perfkit asks for raw samples (a range selector,
``series{labels}[Ns]``) rather than an evaluated ``query_range``: what reaches a report is what the exporter
said, at the instant it said it. The sampler polls for new samples every ``poll_s`` while the run goes on; a
window waits for the first scrape after its end only when it is long enough to be measured at all (two scrape
intervals), so short requests cost no waiting and say "too short for the scrape interval" instead.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import httpx

from perfkit.core.clock import now_ns
from perfkit.core.secrets import redact_text
from perfkit.sampling._periodic import PeriodicSampler
from perfkit.sampling.exposition import GROUPS, Converter, Reading, names_of

LOOKBACK_MAX_S = 600.0  # the first poll and a poll after a pause never ask for more than this


class PrometheusError(Exception):
    """Prometheus did not answer, answered with an error, or the labels select nothing."""


def selector(names: list[str], labels: Mapping[str, str]) -> str:
    """``{__name__=~"A|B",k="v"}``: one selector for a group's series (values escaped for PromQL)."""
    def q(v: str) -> str:
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    parts = ["__name__=~" + q("|".join(re.escape(n) for n in names))]
    parts += [f"{k}={q(v)}" for k, v in labels.items()]
    return "{" + ",".join(parts) + "}"


@dataclass
class Found:
    """What a group's labels select in Prometheus: series names present, hosts, GPUs, the scrape interval."""

    group: str
    selector: str
    series: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)
    gpus: dict[str, str] = field(default_factory=dict)
    interval_s: float | None = None
    collect_interval_s: float | None = None  # how often the values change, where slower than the scrapes
    gpu_hosts: list[str] = field(default_factory=list)  # hosts whose GPUs the labels select


class PrometheusClient:
    """The few HTTP API calls perfkit makes (``/api/v1/query``); headers (a bearer token) are sent, never kept
    in what perfkit writes."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self._client = httpx.Client(timeout=timeout_s, headers=dict(headers or {}))

    def close(self) -> None:
        self._client.close()

    def query(self, promql: str, at_unix_s: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql}
        if at_unix_s is not None:
            params["time"] = f"{at_unix_s:.3f}"
        where = f"Prometheus at {redact_text(self.url)}"
        try:
            r = self._client.get(f"{self.url}/api/v1/query", params=params)
        except httpx.HTTPError as e:
            raise PrometheusError(f"{where} did not answer: {type(e).__name__}: {e}") from None
        try:
            body = r.json()
        except ValueError:
            raise PrometheusError(f"{where} answered HTTP {r.status_code} with no JSON (is it a Prometheus?): "
                                  f"{r.text[:200]!r}") from None
        if r.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{where}: HTTP {r.status_code}: {body.get('errorType', '')} "
                                  f"{body.get('error', '')}".strip())
        return body["data"]["result"]

    def raw(self, sel: str, lookback_s: float, at_unix_s: float | None = None) -> list[tuple[str, dict, float, float]]:
        """Raw samples of ``sel`` in the ``lookback_s`` before ``at``: (name, labels, unix time, value)."""
        out = []
        for series in self.query(f"{sel}[{max(1, math.ceil(lookback_s))}s]", at_unix_s):
            labels = dict(series["metric"])
            name = labels.pop("__name__", "")
            out += [(name, labels, float(ts), float(v)) for ts, v in series.get("values", [])]
        return out


def discover(client: PrometheusClient, labels: Mapping[str, Mapping[str, str]], lookback_s: float = 300.0
             ) -> dict[str, Found]:
    """Per group with labels: which series exist, on which hosts and GPUs, and the scrape interval (the median
    spacing of their samples). PrometheusError when it does not answer."""
    out: dict[str, Found] = {}
    for group in GROUPS:
        if group not in labels:
            continue
        sel = selector(names_of(group), labels[group])
        f = Found(group, sel)
        samples = client.raw(sel, lookback_s)
        by_key: dict[tuple, list[float]] = {}
        values: dict[tuple, list[tuple[float, float]]] = {}
        for name, lab, ts, v in samples:
            key = (name, tuple(sorted(lab.items())))
            by_key.setdefault(key, []).append(ts)
            values.setdefault(key, []).append((ts, v))
            inst = lab.get("Hostname") or lab.get("instance")
            if inst:
                f.instances.append(str(inst))
            if group == "gpu" and "gpu" in lab:
                f.gpus[str(lab["gpu"])] = str(lab.get("modelName", ""))
                if inst:
                    f.gpu_hosts.append(str(inst))
        f.gpu_hosts = sorted(set(f.gpu_hosts))
        present = {k[0] for k in by_key}
        f.series = [n for n in names_of(group) if n in present]
        f.missing = [n for n in names_of(group) if n not in present]
        f.instances = sorted(set(f.instances))
        gaps = sorted(b - a for ts in by_key.values() for a, b in zip(sorted(ts), sorted(ts)[1:]) if b > a)
        if gaps:
            f.interval_s = round(gaps[len(gaps) // 2], 3)
        f.collect_interval_s = _change_interval(values.values())
        out[group] = f
    return out


def _change_interval(series) -> float | None:
    """The shortest per-series median spacing of value changes (see ``Converter.change_interval_s``)."""
    meds = []
    for pts in series:
        pts = sorted(pts)
        changes = [t for (t, v), (_, prev) in zip(pts[1:], pts) if v != prev]
        gaps = sorted(b - a for a, b in zip(changes, changes[1:]))
        if len(gaps) >= 2:
            meds.append(gaps[len(gaps) // 2])
    return round(min(meds), 3) if meds else None


def one_host(found: Mapping[str, Found], where: str = "telemetry.prometheus.gpu_labels") -> str | None:
    """Why GPU labels that select the GPUs of several hosts are refused (their counters would interleave, and
    which host's GPU holds the server is anyone's guess), or None."""
    f = found.get("gpu")
    if f is None or len(f.gpu_hosts) <= 1:
        return None
    return (f"{where}: {f.selector} selects the GPUs of {len(f.gpu_hosts)} hosts ({', '.join(f.gpu_hosts)}); "
            f"add the label that names the server's host, e.g. Hostname: {f.gpu_hosts[0]}")


def _group(row: dict[str, Any]) -> str:
    if row.get("gpu") is not None:
        return "gpu"
    return "host" if any(k.startswith("server_host_") for k in row) else "server"


class PrometheusSampler(PeriodicSampler):
    """Polls Prometheus for the raw samples of the server host's series (``selectors``: group → labels) and keeps
    them as sample rows on the run's clock, ``source`` = ``prometheus``.

    Args:
        url, headers: the Prometheus and how to authenticate to it.
        labels: group (``gpu``, ``host``, ``server``) → the label values that select the server host's series.
        resolution_s: the scrape interval of those series (from :func:`discover` when not given).
        poll_s: how often new samples are fetched (default: the resolution, at most 1 s).
    """

    source = "prometheus"
    remote = True

    def __init__(self, url: str, labels: Mapping[str, Mapping[str, str]], *, headers: Mapping[str, str] | None = None,
                 resolution_s: float, poll_s: float | None = None, collect_interval_s: float | None = None):
        super().__init__(poll_s or min(resolution_s, 1.0))
        self.collect_interval_s = collect_interval_s  # from the series' history, until the run's own readings say
        self.url, self.labels, self.headers = url, {g: dict(v) for g, v in labels.items()}, dict(headers or {})
        self.resolution_s = resolution_s
        self.converter = Converter(self.source, resolution_s, redact_text(url))
        self._client: PrometheusClient | None = None
        self._last_ts: dict[tuple, float] = {}
        self._last_by_group: dict[str, int] = {}
        self._polled_to: float | None = None
        # One anchor maps Prometheus's unix timestamps to the run clock (perf_counter), so every sample keeps its
        # place however late it was fetched.
        self._anchor_wall, self._anchor_ns = time.time(), now_ns()

    def to_run_clock(self, unix_s: float) -> int:
        return self._anchor_ns + int((unix_s - self._anchor_wall) * 1e9)

    def _setup(self) -> None:
        self._client = PrometheusClient(self.url, self.headers)
        self._polled_to = time.time() - 2 * self.resolution_s  # the readings just before the first window

    def _teardown(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _sample(self, t_ns: int) -> list[dict[str, Any]]:
        if self._client is None:
            return []
        now = time.time()
        lookback = min(LOOKBACK_MAX_S, now - (self._polled_to or now) + 2 * self.resolution_s)
        by_ts: dict[float, list[Reading]] = {}
        for group, lab in self.labels.items():
            for name, labels, ts, v in self._client.raw(selector(names_of(group), lab), lookback, now):
                key = (name, tuple(sorted(labels.items())))
                if ts <= self._last_ts.get(key, -math.inf):
                    continue
                self._last_ts[key] = ts
                by_ts.setdefault(ts, []).append((name, labels, v))
        self._polled_to = now
        rows: list[dict[str, Any]] = []
        for ts in sorted(by_ts):
            rows += self.converter.rows(self.to_run_clock(ts), by_ts[ts])
        return rows

    def _add(self, rows: list[dict[str, Any]]) -> None:
        super()._add(rows)
        for r in rows:
            g = _group(r)
            if r["t_ns"] > self._last_by_group.get(g, -1):
                self._last_by_group[g] = r["t_ns"]

    def last_t_ns(self) -> int | None:
        # Each exporter is scraped on its own schedule: a window's end is covered only when every group's readings
        # have passed it (a node exporter's later scrape does not stand for the DCGM reading still to come).
        with self._lock:
            return min(self._last_by_group.values()) if self._last_by_group else None

    @property
    def change_interval_s(self) -> float | None:
        return self.converter.change_interval_s or self.collect_interval_s

    def wait_past(self, t_ns: int, timeout_s: float | None = None) -> None:
        # The first scrape after t comes within one interval, and the next poll fetches it.
        super().wait_past(t_ns, timeout_s if timeout_s is not None else self.resolution_s + 2 * self.interval_s + 1.0)

    def describe(self) -> list[dict[str, Any]]:
        return [{"source": self.source, "origin": redact_text(self.url), "labels": self.labels,
                 "resolution_s": self.resolution_s, "change_interval_s": self.change_interval_s,
                 "hosts": sorted(self.converter.hosts),
                 "gpus": {str(i): n for i, n in self.converter.gpu_names.items()}}]
