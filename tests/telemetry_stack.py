"""The real telemetry parts a user's GPU host has, started for a test: Debian's ``prometheus-node-exporter`` and
``prometheus`` (installed by scripts/setup.sh when it runs as root with apt), Prometheus scraping the node
exporter and whatever else a test names (a stand-in DCGM exporter, the engine's ``/metrics``).

    with TelemetryStack(tmp_path, {"dcgm": dcgm.address}) as stack:
        stack.prometheus_url, stack.node_url
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Mapping

import httpx

SCRAPE_INTERVAL_S = 0.5


def binary(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if Path(p).exists()), None)


def missing() -> str | None:
    """Why the stack can't run here (a line for pytest.skip), or None."""
    for name in ("prometheus", "prometheus-node-exporter"):
        if binary(name) is None:
            return (f"{name} is not installed: scripts/setup.sh installs it as root with apt "
                    f"(apt-get install prometheus prometheus-node-exporter)")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TelemetryStack:
    """A node exporter and a Prometheus scraping it and ``jobs`` (job name → host:port or a dict with
    ``targets``/``metrics_path``/``params``) every ``SCRAPE_INTERVAL_S``; both stopped on exit."""

    def __init__(self, home: Path, jobs: Mapping[str, object] = (), scrape_interval_s: float = SCRAPE_INTERVAL_S):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.jobs = dict(jobs)
        self.scrape_interval_s = scrape_interval_s
        self.node_port, self.prom_port = free_port(), free_port()
        self.node_url = f"http://127.0.0.1:{self.node_port}/metrics"
        self.prometheus_url = f"http://127.0.0.1:{self.prom_port}"
        self.procs: list[subprocess.Popen] = []

    def _config(self) -> str:
        ms = int(self.scrape_interval_s * 1000)
        jobs = {"node": {"targets": [f"127.0.0.1:{self.node_port}"]}}
        for name, spec in self.jobs.items():
            jobs[name] = spec if isinstance(spec, dict) else {"targets": [spec]}
        lines = ["global:", f"  scrape_interval: {ms}ms", f"  scrape_timeout: {ms}ms", "scrape_configs:"]
        for name, spec in jobs.items():
            lines += [f"  - job_name: {name}", f"    metrics_path: {spec.get('metrics_path', '/metrics')}"]
            if spec.get("params"):
                lines.append("    params:")
                lines += [f"      {k}: [{v!r}]" for k, v in spec["params"].items()]
            lines += ["    static_configs:", f"      - targets: {list(spec['targets'])!r}"]
        return "\n".join(lines) + "\n"

    def start(self) -> "TelemetryStack":
        cfg = self.home / "prometheus.yml"
        cfg.write_text(self._config())
        self._spawn([binary("prometheus-node-exporter"), f"--web.listen-address=127.0.0.1:{self.node_port}",
                     "--collector.disable-defaults", "--collector.cpu", "--collector.meminfo", "--collector.diskstats"],
                    "node-exporter.log")
        self._spawn([binary("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={self.home / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{self.prom_port}", "--storage.tsdb.retention.time=1h"],
                    "prometheus.log")
        self._wait_up()
        return self

    def _spawn(self, argv: list, log: str) -> None:
        f = open(self.home / log, "wb")
        self.procs.append(subprocess.Popen([str(a) for a in argv], stdout=f, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _wait_up(self, timeout_s: float = 60.0) -> None:
        """Until Prometheus holds two scrapes of every job (so the scrape interval can be measured)."""
        deadline = time.monotonic() + timeout_s
        want = {"node", *self.jobs}
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}: "
                                       + (self.home / ("prometheus.log" if "prometheus" == Path(p.args[0]).name
                                                       else "node-exporter.log")).read_text()[-2000:])
            try:
                r = httpx.get(f"{self.prometheus_url}/api/v1/query",
                              params={"query": "count_over_time(up[30s]) >= 2"}, timeout=2)
                have = {s["metric"].get("job") for s in r.json()["data"]["result"]}
                if want <= have:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"Prometheus did not scrape {sorted(want)} twice within {timeout_s:.0f} s")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []

    def __enter__(self) -> "TelemetryStack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
