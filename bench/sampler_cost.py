"""Benchmark: the resource sampler's own CPU cost at 100 ms and 10 ms intervals.

Samples the process tree of a real embedded llama-server (router + a loaded model process) with
the system sampler and, where NVML exists, the GPU sampler. The cost is the extra CPU time the
sampling process uses over an idle baseline of the same length, as % of one core and µs per tick.

    .venv/bin/python bench/sampler_cost.py [--seconds 10] [--intervals 0.1 0.01]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def cpu_over(seconds: float) -> float:
    c0 = time.process_time()
    time.sleep(seconds)
    return time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--intervals", type=float, nargs="+", default=[0.1, 0.01])
    a = ap.parse_args()
    from perfkit.kinds.llamacpp import LlamaServerBackend
    from perfkit.kinds.llamacpp.engine import Engine
    from perfkit.kinds.llamacpp.models import models_dir
    from perfkit.sampling import Monitor

    with Engine(models_dir(), {"num_thread": 2}) as e:
        LlamaServerBackend.from_engine(e).load("smollm2-135m-q4_1")
        base = cpu_over(a.seconds)
        for interval in a.intervals:
            with Monitor(interval, lambda: [e.proc.pid]) as m:
                time.sleep(0.5)
                used = cpu_over(a.seconds)
                ticks = len([s for s in m.system.samples])
            extra = max(0.0, used - base)
            gpu = "GPU sampler on" if m.has_gpu else f"GPU: {m.unavailable.get('gpu', 'off')}"
            print(f"interval {interval * 1e3:>5.0f} ms: {ticks} ticks; sampler CPU {100 * extra / a.seconds:.2f}% of one core, "
                  f"{1e6 * extra / max(1, ticks - 0.5 / interval):.0f} µs per tick "
                  f"(process CPU {used:.3f} s vs idle {base:.3f} s over {a.seconds:g} s; tree of "
                  f"{m.frame()['server_processes'].dropna().iloc[-1]:.0f} server processes; {gpu})")


if __name__ == "__main__":
    main()
