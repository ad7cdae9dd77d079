"""A background sampler on a fixed, non-drifting schedule."""

from __future__ import annotations

import threading
import time
from typing import Any

from perfkit.core.clock import now_ns


class PeriodicSampler:
    """Calls ``_sample(t_ns)`` every ``interval_s`` seconds in a daemon thread.

    Ticks sit at ``t0 + k·interval`` on the perf_counter clock, so a slow sample never shifts the
    ones after it; a tick missed entirely is skipped, not made up in a burst. Samples are dicts
    with ``t_ns`` on the same clock as every request record. ``unavailable`` maps a metric (or the
    whole source) to the reason it could not be read; sampling goes on without it.
    """

    source = "sampler"
    remote = False  # True: readings of another host's exporter, as coarse as ``resolution_s``

    def __init__(self, interval_s: float = 0.1):
        if interval_s <= 0:
            raise ValueError(f"sampling interval must be > 0 s, got {interval_s}")
        self.interval_s = interval_s
        self.resolution_s = interval_s  # how far apart readings are asked for (a scrape interval)
        self.samples: list[dict[str, Any]] = []
        self.unavailable: dict[str, str] = {}
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: list[dict[str, Any]] = []  # taken, not yet drained into the store
        # False where only drain() is read (an agent ships its rows away): nothing piles up over a long run.
        self.keep_samples = True

    @property
    def change_interval_s(self) -> float | None:
        """How often the source's values really change (an exporter that refreshes slower than it is read), where
        it is seen; None otherwise."""
        return None

    @property
    def true_resolution_s(self) -> float:
        """Seconds between readings that say something new: the asked-for interval, or the exporter's own refresh
        (its collect interval) when that is slower."""
        return max(self.resolution_s, self.change_interval_s or 0.0)

    def resolution_words(self) -> str:
        """What limits the source's resolution, for a reader: "the scrape interval (500 ms)", or "the exporter's
        collect interval (5 s)"."""
        from perfkit.core import fmt

        ch = self.change_interval_s
        if ch is not None and ch > self.resolution_s * 1.5:
            return f"the collect interval of its exporter ({fmt.duration(ch)}: its values change no more often)"
        return f"the scrape interval ({fmt.duration(self.resolution_s)})"

    # subclasses
    def _setup(self) -> None: ...

    def _sample(self, t_ns: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _teardown(self) -> None: ...

    def sample_once(self) -> list[dict[str, Any]]:
        rows = self._safe_sample(now_ns())
        self._add(rows)
        return rows

    def _add(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with self._lock:
            if self.keep_samples:
                late = bool(self.samples) and rows[0]["t_ns"] < self.samples[-1]["t_ns"]
                self.samples.extend(rows)
                if late:  # a remote source's reading fetched after a later one: windows bisect on time
                    self.samples.sort(key=lambda r: r["t_ns"])
            self._pending.extend(rows)

    def _safe_sample(self, t_ns: int) -> list[dict[str, Any]]:
        try:
            return self._sample(t_ns)
        except Exception as e:  # noqa: BLE001 - a sampler must never take a study down
            self.errors += 1
            self.unavailable.setdefault(f"{self.source}.sample", f"{type(e).__name__}: {e}")
            return []

    def _run(self) -> None:
        interval_ns = int(self.interval_s * 1e9)
        t0 = now_ns()
        k = 0
        while not self._stop.is_set():
            self._add(self._safe_sample(now_ns()))
            k = max(k + 1, (now_ns() - t0) // interval_ns + 1)
            self._stop.wait(max(0.0, (t0 + k * interval_ns - now_ns()) / 1e9))

    def start(self) -> "PeriodicSampler":
        self._setup()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"perfkit-{self.source}-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None
        self._teardown()

    def drain(self) -> list[dict[str, Any]]:
        """Samples taken since the last drain (for appending to the store)."""
        with self._lock:
            new, self._pending = self._pending, []
        return new

    def last_t_ns(self) -> int | None:
        with self._lock:
            return self.samples[-1]["t_ns"] if self.samples else None

    def wait_past(self, t_ns: int, timeout_s: float | None = None) -> None:
        """Block until a sample later than ``t_ns`` exists (so a window's end can be interpolated)."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else 2 * self.interval_s + 0.05)
        while (self.last_t_ns() or 0) <= t_ns and self._thread is not None and time.monotonic() < deadline:
            time.sleep(min(0.005, self.interval_s / 4))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
