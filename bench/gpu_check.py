"""GPU check: perfkit's NVML sampler against NVML read directly and against nvidia-smi, on a real GPU.

A process holds GPU memory and runs bf16 matrix products (PyTorch) for a few seconds between two idle
stretches. Compared: the Monitor's window energy (energy counter) with the counter read directly and with
nvidia-smi's power integrated; mean utilization and power in the load and idle windows; the GPU memory the
"server" process holds (this process, by pid). Prints a table; no assertions (a benchmark, not a test).

    PYTHONPATH=. python3 bench/gpu_check.py [--load-s 8] [--idle-s 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def smi_sampler(path: str) -> subprocess.Popen:
    return subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,power.draw,memory.used",
                             "--format=csv,noheader,nounits", "-lms", "100"], stdout=open(path, "w"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--load-s", type=float, default=8.0)
    ap.add_argument("--idle-s", type=float, default=3.0)
    a = ap.parse_args()
    import pynvml
    import torch

    from perfkit.core import host
    from perfkit.core.clock import now_ns
    from perfkit.sampling import Monitor

    print("host.info gpus:", host.info().get("gpus"))
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    smi = smi_sampler("/tmp/smi.csv")
    mon = Monitor(0.1, lambda: [os.getpid()], gpu=True, system=True).start()
    time.sleep(1.0)
    with mon.window("idle_before") as w_idle:
        time.sleep(a.idle_s)
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    e0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    t0, n = now_ns(), 0
    with mon.window("load") as w_load:
        end = time.perf_counter() + a.load_s
        while time.perf_counter() < end:
            y = x @ x
            n += 1
            if n % 20 == 0:
                torch.cuda.synchronize()
        torch.cuda.synchronize()
    e1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    t1 = now_ns()
    held = torch.cuda.memory_reserved()
    with mon.window("idle_after") as w_after:
        time.sleep(a.idle_s)
    mon.stop()
    smi.terminate()
    del y
    tflops = n * 2 * 8192**3 / ((t1 - t0) * 1e-9) / 1e12
    print(f"workload: {n} bf16 8192³ products in {(t1 - t0) * 1e-9:.2f} s = {tflops:.0f} TFLOP/s; torch reserved "
          f"{held / 2**30:.2f} GiB")
    for win in (w_idle["window"], w_load["window"], w_after["window"]):
        s = win.stats
        print(f"[{win.name}] {win.duration_s:.2f} s, {win.n_samples} samples: util mean {s.get('gpu_util_pct_mean')}, "
              f"power mean {s.get('power_w_mean')} W, energy {win.energy_j} J ({win.energy_method}), "
              f"server GPU mem max {s.get('server_gpu_mem_bytes_max')} B, mem used max {s.get('gpu_mem_used_bytes_max')} B")
    print(f"NVML energy counter read directly over the load: {(e1 - e0) / 1000:.1f} J "
          f"(Monitor window: {w_load['window'].energy_j})")
    rows = [r.split(", ") for r in open("/tmp/smi.csv").read().splitlines() if r.count(",") == 3]
    from datetime import datetime

    wall0 = time.time() - (now_ns() - t0) * 1e-9
    wall1 = wall0 + (t1 - t0) * 1e-9
    pts = []
    for ts, util, pw, mem in rows:
        try:
            t = datetime.strptime(ts, "%Y/%m/%d %H:%M:%S.%f").timestamp()
            pts.append((t, float(util), float(pw), float(mem)))
        except ValueError:
            continue
    inside = [p for p in pts if wall0 <= p[0] <= wall1]
    if inside:
        print(f"nvidia-smi over the load ({len(inside)} samples): util mean {sum(p[1] for p in inside) / len(inside):.1f}, "
              f"power mean {sum(p[2] for p in inside) / len(inside):.1f} W → energy ≈ "
              f"{sum(p[2] for p in inside) / len(inside) * (t1 - t0) * 1e-9:.1f} J, mem max {max(p[3] for p in inside):.0f} MiB")
    print("sampler unavailable:", mon.unavailable, "| errors:", sum(s.errors for s in mon.samplers))
    print("nvidia-smi:", subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,power.limit",
                                         "--format=csv,noheader"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
