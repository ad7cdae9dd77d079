"""Host and server-process sampling with psutil: CPU %, resident memory and disk reads of the
server's whole process tree (router and model processes), host memory available, and the load the
rest of the machine puts on it (other processes' CPU, steal), which makes a series noisy."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import psutil

from perfkit.sampling._periodic import PeriodicSampler

CREATE_TIME_ERROR_S = 1.5  # how far psutil's process start time may be from the wall clock


class SystemSampler(PeriodicSampler):
    """Args:
        interval_s: seconds between samples.
        root_pids: callable returning the server's root process ids (their descendants are included).

    ``server_read_bytes`` is cumulative and monotonic over the run: reads of processes that have
    exited (an unloaded model) stay counted. CPU figures in % of one core, except ``host_cpu_pct`` and
    ``steal_pct`` (% of the whole machine): ``client_cpu_pct`` is this process (perfkit's client),
    ``other_cpu_pct`` everything that is neither the server nor the client.
    """

    source = "system"

    def __init__(self, interval_s: float = 0.1, root_pids: Callable[[], Iterable[int]] | None = None,
                 tree_refresh_s: float = 0.25):
        super().__init__(interval_s)
        self.root_pids = root_pids
        self.tree_refresh_s = tree_refresh_s
        self._procs: dict[int, psutil.Process] = {}
        self._last_read: dict[int, int] = {}
        self._read_total = 0
        self._tree: list[int] = []
        self._tree_roots: list[int] = []
        self._tree_at = 0.0
        self._self = psutil.Process()
        self._cpu_last: dict[int, float] = {}
        self._host_last = None
        self._wall_last: float | None = None
        self._ncpu = psutil.cpu_count() or 1

    def tree_pids(self) -> list[int]:
        """The server's process tree. Finding children means reading every /proc/<pid>/stat (85% of a
        tick), so the tree is rescanned every ``tree_refresh_s`` (or when the roots change): a new model
        process is seen within that time, and one that exits drops out at once."""
        roots = list(self.root_pids()) if self.root_pids else []
        now = time.monotonic()
        if roots != self._tree_roots or now - self._tree_at >= self.tree_refresh_s:
            pids: list[int] = []
            for root in roots:
                try:
                    pids += [root] + [c.pid for c in psutil.Process(root).children(recursive=True)]
                except psutil.Error:
                    continue
            self._tree, self._tree_roots, self._tree_at = pids, roots, now
        return [p for p in self._tree if psutil.pid_exists(p)]

    def _proc(self, pid: int) -> psutil.Process:
        p = self._procs.get(pid)
        if p is None:
            p = self._procs[pid] = psutil.Process(pid)
        return p

    def _host_cpu(self) -> tuple[float, float]:
        """(busy %, steal %) of the whole machine since the last sample, from /proc/stat's counters.

        Computed from ``psutil.cpu_times()`` deltas rather than ``cpu_times_percent``: on these VMs the
        latter reported 90% busy over 50 ms on an idle machine (idle 10%, 20% at 100 ms, ...), which
        flagged every request as noisy.
        """
        t = psutil.cpu_times()
        last, self._host_last = self._host_last, t
        if last is None:
            return 0.0, 0.0
        total = sum(t) - sum(last)
        if total <= 0:
            return 0.0, 0.0
        idle = (t.idle - last.idle) + (getattr(t, "iowait", 0.0) - getattr(last, "iowait", 0.0))
        steal = getattr(t, "steal", 0.0) - getattr(last, "steal", 0.0)
        return max(0.0, 100.0 * (1 - idle / total)), max(0.0, 100.0 * steal / total)

    def _cpu_delta_s(self, pid: int, p: psutil.Process) -> float:
        """CPU seconds ``pid`` used since the last sample. A process first seen now (a model process the
        tree rescan found up to ``tree_refresh_s`` late) counts all its CPU since it started, if it started
        after the last sample: otherwise that load would be missing from the server and, on a cold load,
        wrongly counted as other processes' load."""
        t = p.cpu_times()
        used = t.user + t.system
        last = self._cpu_last.get(pid)
        self._cpu_last[pid] = used
        if last is not None:
            return max(0.0, used - last)
        # psutil's create_time is the boot time (whole seconds in /proc/stat) plus the start ticks: up to a second
        # off, which made a model process spawned during a load look older than the last sample, its CPU then
        # counted as other processes' and every cold load flagged noisy.
        slack_s = self.tree_refresh_s + self.interval_s + CREATE_TIME_ERROR_S
        if self._wall_last is not None and p.create_time() >= self._wall_last - slack_s:
            return used
        return 0.0

    def _sample(self, t_ns: int) -> list[dict[str, Any]]:
        vm = psutil.virtual_memory()
        busy, steal = self._host_cpu()
        client = self._self.cpu_percent(None)
        row: dict[str, Any] = {"source": "system", "t_ns": t_ns, "host_mem_available_bytes": vm.available,
                               "host_cpu_pct": busy, "steal_pct": steal, "client_cpu_pct": client}
        if self.root_pids is None:
            row["other_cpu_pct"] = max(0.0, busy * self._ncpu - client)
            return [row]
        wall = time.time()
        dt = wall - self._wall_last if self._wall_last is not None else None
        cpu_s, rss, n = 0.0, 0, 0
        live = set(self.tree_pids())
        for pid in live:
            try:
                p = self._proc(pid)
                with p.oneshot():
                    cpu_s += self._cpu_delta_s(pid, p)
                    rss += p.memory_info().rss
                    if "io" not in self.unavailable:
                        try:
                            rb = p.io_counters().read_bytes
                            self._read_total += max(0, rb - self._last_read.get(pid, 0))
                            self._last_read[pid] = rb
                        except (psutil.AccessDenied, AttributeError) as e:
                            self.unavailable["io"] = f"{type(e).__name__}: {e}"
                n += 1
            except psutil.Error:
                self._procs.pop(pid, None)
        for gone in set(self._procs) - live:
            self._procs.pop(gone, None)
            self._cpu_last.pop(gone, None)
        self._wall_last = wall
        cpu = 100.0 * cpu_s / dt if dt else 0.0
        # Not clamped per sample: a late-found process's earlier CPU lands here as a negative share that
        # cancels the "other" it was counted as before, so the mean over a window is right.
        row.update({"server_cpu_pct": cpu, "server_rss_bytes": rss, "server_processes": n,
                    "other_cpu_pct": busy * self._ncpu - client - cpu,
                    "server_read_bytes": self._read_total if "io" not in self.unavailable else None})
        return [row]
