"""A stand-in for NVIDIA's DCGM exporter with known readings, for telemetry tests on a machine without a GPU.

It serves ``/metrics`` in dcgm-exporter's own format (its default counters, its labels: ``gpu``, ``UUID``,
``device``, ``modelName``, ``Hostname``). Each GPU's readings are constant except the energy counter, which
grows at exactly the GPU's power: so the energy of any window is power × duration, and a figure that reaches
a report can be checked against what was exported.

Like dcgm-exporter, it can refresh its readings only every ``collect_interval_s`` (the exporter's
``-c``/``DCGM_EXPORTER_INTERVAL``, 30 s by default): a scrape in between gets the cached values of the last
collection, energy counter included. Several stand-ins with their own ``hostname`` make a fleet of hosts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Gpu:
    util_pct: float
    power_w: float
    fb_used_mib: float = 40_000
    fb_free_mib: float = 41_000
    mem_copy_util_pct: float = 30
    temp_c: float = 55
    sm_clock_mhz: float = 1980
    name: str = "NVIDIA H100 80GB HBM3"


DEFAULT_GPUS = (Gpu(62, 250), Gpu(38, 100))
IDLE = Gpu(0, 61.0, fb_used_mib=4, fb_free_mib=81_000, mem_copy_util_pct=0, temp_c=31, sm_clock_mhz=345)


def one_busy(busy: Gpu, n: int = 4, index: int = 0) -> tuple[Gpu, ...]:
    """``n`` GPUs of one host, GPU ``index`` running the server (``busy``), the others idle."""
    return tuple(busy if i == index else IDLE for i in range(n))
_FIELDS = (("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", "sm_clock_mhz"),
           ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", "temp_c"),
           ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", "power_w"),
           ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", "util_pct"),
           ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", "mem_copy_util_pct"),
           ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", "fb_free_mib"),
           ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", "fb_used_mib"))


class DcgmStandin:
    """``with DcgmStandin(hostname="gpu-a") as d: d.url`` → http://127.0.0.1:PORT/metrics."""

    def __init__(self, gpus: tuple[Gpu, ...] = DEFAULT_GPUS, hostname: str = "gpu-a",
                 collect_interval_s: float | None = None):
        self.gpus, self.hostname = gpus, hostname
        self.collect_interval_s = collect_interval_s
        self.t0 = time.time()
        self.energy0_mj = 123_456_789.0
        self.scrapes = 0
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = standin.page(standin.collected_at(time.time())).encode()
                standin.scrapes += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def collected_at(self, t: float) -> float:
        """When the readings a scrape at ``t`` gets were taken: at ``t``, or at the last collection."""
        if not self.collect_interval_s:
            return t
        return self.t0 + ((t - self.t0) // self.collect_interval_s) * self.collect_interval_s

    def energy_mj(self, i: int, t: float) -> float:
        return self.energy0_mj + self.gpus[i].power_w * (t - self.t0) * 1000.0

    def page(self, t: float) -> str:
        lines = []
        for name, kind, help_, attr in _FIELDS:
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
            lines += [f'{name}{{{self._labels(i)}}} {getattr(g, attr):g}' for i, g in enumerate(self.gpus)]
        name = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
        lines += [f"# HELP {name} Total energy consumption since boot (in mJ).", f"# TYPE {name} counter"]
        lines += [f'{name}{{{self._labels(i)}}} {self.energy_mj(i, t):.0f}' for i in range(len(self.gpus))]
        return "\n".join(lines) + "\n"

    def _labels(self, i: int) -> str:
        g = self.gpus[i]
        return (f'gpu="{i}",UUID="GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd",device="nvidia{i}",'
                f'modelName="{g.name}",Hostname="{self.hostname}"')

    def __enter__(self) -> "DcgmStandin":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
