"""Benchmark: how exact telemetry from the server's host is, and what reading the engine's own metrics costs it.

    .venv/bin/python bench/telemetry.py [--windows 0.8 2 5] [--scrape 0.5 1] [--reps 5] [--requests 40]
        [--engine-interval 1] [--no-accuracy] [--no-cost]

1. Accuracy (needs Debian's prometheus and prometheus-node-exporter): a stand-in DCGM exporter (tests/dcgm_standin.py)
   exports constant utilization and power and an energy counter growing at exactly that power, so the truth of any
   window is known. Debian's Prometheus scrapes it (and a real node exporter) at each --scrape interval; perfkit's
   Prometheus source and its direct scrape measure windows of each length in --windows. Printed per source,
   interval and window: the energy error (measured ÷ power × duration − 1; p50 and worst of --reps), the
   utilization error, and how many windows said "too short for the scrape interval" instead of a number.
2. Cost (the real engine): --requests sequential requests while the engine's /metrics is read every
   --engine-interval seconds, as a study reads it; TTFT of the requests whose prefill overlapped a read against
   those that did not (and decode likewise), Hodges–Lehmann ratio with its CI.

Check `uptime` first: a busy machine moves part 2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def accuracy(windows: list[float], scrapes: list[float], reps: int) -> None:
    import telemetry_stack
    from dcgm_standin import DEFAULT_GPUS, DcgmStandin
    from perfkit.core.clock import now_ns
    from perfkit.sampling import Monitor
    from perfkit.sampling.prometheus import PrometheusSampler
    from perfkit.sampling.scrape import ScrapeSampler, ScrapeTarget

    why = telemetry_stack.missing()
    if why:
        print(f"accuracy: skipped ({why})")
        return
    power = sum(g.power_w for g in DEFAULT_GPUS)
    util = sum(g.util_pct for g in DEFAULT_GPUS) / len(DEFAULT_GPUS)
    print("| source | scrape | window | energy error p50 / worst | utilization error | too short |")
    print("|---|---|---|---|---|---|")
    for scrape in scrapes:
        with DcgmStandin() as d, tempfile.TemporaryDirectory() as tmp, \
                telemetry_stack.TelemetryStack(Path(tmp), {"dcgm": d.address}, scrape_interval_s=scrape) as st:
            for name, make in (("prometheus", lambda: PrometheusSampler(st.prometheus_url, {"gpu": {"Hostname": "gpu-a"}},
                                                                         resolution_s=scrape)),
                               ("scrape", lambda: ScrapeSampler([ScrapeTarget([d.url])], interval_s=scrape))):
                with Monitor(0.1, None, gpu=False, system=False, telemetry=[make()]) as m:
                    time.sleep(2 * scrape)
                    for w_s in windows:
                        errs, uerr, short = [], [], 0
                        for _ in range(reps):
                            t0 = now_ns()
                            time.sleep(w_s)
                            w = m.measure("w", t0, now_ns())
                            if w.energy_j is None:
                                short += 1
                                continue
                            errs.append(w.energy_j / (power * w.duration_s) - 1)
                            uerr.append(w.stats["gpu_util_pct_mean"] - util)
                        e = (f"{100 * statistics.median(errs):+.2f}% / {100 * max(errs, key=abs):+.2f}%" if errs
                             else "—")
                        u = f"{max(uerr, key=abs):+.2f} points" if uerr else "—"
                        print(f"| {name} | {scrape:g} s | {w_s:g} s | {e} | {u} | {short} of {reps} |")


def cost(n: int, interval_s: float) -> None:
    """The engine's /metrics read every ``interval_s`` through a whole series of sequential requests, as a study
    reads it; each request's TTFT is then compared between requests whose prefill overlapped a read and those
    that did not (and the decode the same way), so drift between blocks can't pose as a cost."""
    import random

    from perfkit.analysis import stats
    from perfkit.kinds.llamacpp import LlamaServerBackend
    from perfkit.client.backends import Sampling
    from perfkit.sampling.scrape import ScrapeSampler, ScrapeTarget
    from perfkit.kinds.llamacpp.engine import Engine
    from perfkit.kinds.llamacpp.models import models_dir

    model = "smollm2-135m-q4_1"
    rng = random.Random(1)
    with Engine(models_dir(), {"num_thread": 2}) as e:
        be = LlamaServerBackend.from_engine(e)
        be.load(model)
        url = f"{e.base_url}/metrics?model={model}&autoload=false"
        sampler = ScrapeSampler([ScrapeTarget([url], absent_ok=(400,), source="engine")], interval_s, source="engine")
        recs = []
        with sampler:
            for i in range(n):
                time.sleep(rng.uniform(0, interval_s))  # requests land at every phase of the read cycle
                r = be.generate(model, f"[{i}] Explain how tides form, briefly.", Sampling(num_predict=32), timeout_s=120)
                if r.ok:
                    recs.append(r)
            reads = sorted(x["t_ns"] for x in sampler.samples)
        be.close()

    def hit(a: int, b: int) -> bool:  # a read was sent in [a, b]
        return any(a <= t <= b for t in reads)

    ttft = {True: [], False: []}
    dec = {True: [], False: []}
    for r in recs:
        ttft[hit(r.t_send_ns, r.t_first_token_ns)].append(r.ttft_s)
        dec[hit(r.t_first_token_ns, r.t_end_ns)].append(r.decode_tok_s)
    for name, d, unit in (("warm TTFT", ttft, "s"), ("decode speed", dec, "tok/s")):
        if d[True] and d[False]:
            q = stats.ratio(d[True], d[False])
            print(f"{name}: with a read {statistics.median(d[True]):.4g} {unit} (n={len(d[True])}), without "
                  f"{statistics.median(d[False]):.4g} {unit} (n={len(d[False])}); with ÷ without {q.value:.3f} "
                  f"[{q.lo:.3f}, {q.hi:.3f}]")
        else:
            print(f"{name}: every request fell on one side (with {len(d[True])}, without {len(d[False])})")
    print(f"reads: {len(reads)}, every {interval_s:g} s; errors {sampler.errors}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=float, nargs="+", default=[0.8, 2, 5])
    ap.add_argument("--scrape", type=float, nargs="+", default=[0.5, 1])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--no-cost", action="store_true")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--engine-interval", type=float, default=1.0, help="seconds between reads of the engine's /metrics")
    a = ap.parse_args()
    if not a.no_accuracy:
        accuracy(a.windows, a.scrape, a.reps)
    if not a.no_cost:
        cost(a.requests, a.engine_interval)


if __name__ == "__main__":
    main()
