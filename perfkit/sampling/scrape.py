"""Direct scrape of metrics endpoints, without a Prometheus: a DCGM exporter, a node exporter, the server's own
``/metrics`` (llama-server ``--metrics``, vLLM), polled at a fixed interval; each reading becomes a sample row
(see :mod:`perfkit.sampling.exposition`) marked with its source, its origin and its resolution."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from perfkit.core.secrets import redact_text
from perfkit.sampling._periodic import PeriodicSampler
from perfkit.sampling.exposition import Converter, parse


@dataclass
class ScrapeTarget:
    """One endpoint, or several read as one (llama-server's router serves ``/metrics?model=NAME`` per loaded
    model: their readings add up to the server's).

    ``absent_ok``: HTTP statuses that mean "nothing to read now" (a model not loaded), not a failure."""

    urls: list[str]
    headers: dict[str, str] = field(default_factory=dict)
    absent_ok: tuple[int, ...] = ()
    source: str = "scrape"

    @property
    def origin(self) -> str:
        return redact_text(self.urls[0].split("?")[0])


def fetch(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> str:
    r = client.get(url, headers=headers or {})
    r.raise_for_status()
    return r.text


class ScrapeSampler(PeriodicSampler):
    """Polls each target every ``interval_s``. A target that fails is recorded in ``unavailable`` (with the
    reason) and polled again at the next tick; the others go on."""

    source = "scrape"
    remote = True  # readings as coarse as the interval: a window shorter than two says so

    def __init__(self, targets: list[ScrapeTarget], interval_s: float = 1.0, timeout_s: float | None = None,
                 source: str = "scrape"):
        super().__init__(interval_s)
        self.source = source
        self.targets = targets
        self.resolution_s = interval_s
        self.timeout_s = timeout_s or max(1.0, interval_s)
        self.converters = [Converter(t.source, interval_s, t.origin) for t in targets]
        self._client: httpx.Client | None = None

    def _setup(self) -> None:
        self._client = httpx.Client(timeout=self.timeout_s)

    def _teardown(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _sample(self, t_ns: int) -> list[dict[str, Any]]:
        client = self._client or httpx.Client(timeout=self.timeout_s)
        rows: list[dict[str, Any]] = []
        for target, conv in zip(self.targets, self.converters):
            readings = []
            for url in target.urls:
                try:
                    r = client.get(url, headers=target.headers)
                    if r.status_code in target.absent_ok:
                        continue
                    r.raise_for_status()
                    readings += parse(r.text)
                except Exception as e:  # noqa: BLE001 - one endpoint down never stops the others
                    self.errors += 1
                    self.unavailable.setdefault(f"scrape {redact_text(url)}", f"{type(e).__name__}: {e}"[:300])
            if readings:
                rows += conv.rows(t_ns, readings)
        return rows

    @property
    def change_interval_s(self) -> float | None:
        seen = [c.change_interval_s for c in self.converters if c.change_interval_s]
        return max(seen) if seen else None

    def wait_past(self, t_ns: int, timeout_s: float | None = None) -> None:
        super().wait_past(t_ns, timeout_s if timeout_s is not None else 2 * self.interval_s + self.timeout_s)

    def describe(self) -> list[dict[str, Any]]:
        return [{"source": t.source, "origin": t.origin, "resolution_s": self.resolution_s,
                 "change_interval_s": c.change_interval_s,
                 "hosts": sorted(c.hosts), "gpus": {str(i): n for i, n in c.gpu_names.items()}}
                for t, c in zip(self.targets, self.converters)]
