"""Benchmark: one series' token rate from this process, from one client node and from two (Ray).

    .venv/bin/python bench/clients.py [--streams 64] [--tokens 200] [--requests 256] [--gap-ms 0]
        [--server-procs 1] [--reps 3] [--json OUT]

A zero-work streaming server (bench/_sse_server.py, OpenAI SSE; --gap-ms 0 sends tokens back to back) makes
the client the bottleneck: the series is client-bound, and the question is how much more one series gets
when its streams are split over client nodes (perfkit.cluster.ClientShares, the split the request engine
makes for worker processes). A Ray cluster of three nodes is started on this machine (tests/ray_cluster.py:
client nodes c1 and c2); each configuration runs --reps times, alternating, and prints tokens/s (tokens ÷
first send → last end, on the driver's clock), the merged self-check (client-bound and why) and each
client's loop-thread busy share. On one machine the client nodes share its cores with the server and with
each other: what two nodes add here is bounded by the cores left, which the load average printed at the
start and the end shows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench._sse_server import SSEServer  # noqa: E402


def _series(backend, shares, streams: int, requests: int, tokens: int) -> dict:
    from perfkit.client.backends import Sampling
    from perfkit.client.loadgen import Job, run_series

    jobs = [Job(backend.target, backend.stream_call("bench", f"bench {i}", Sampling(tokens)), 0.0)
            for i in range(requests)]
    recs, check = run_series(jobs, concurrency=streams, timeout_s=120, shares=shares)
    ok = [r for r in recs if r is not None and r.ok]
    t0 = min(r.t_send_ns for r in ok)
    t1 = max(r.t_send_ns + int(r.e2e_s * 1e9) for r in ok)
    toks = sum(r.output_tokens or 0 for r in ok)
    return {"tok_s": toks / ((t1 - t0) * 1e-9), "ok": len(ok), "requests": requests, "client_bound": check.client_bound,
            "reason": check.reason, "loop_busy": check.loop_busy, "workers": check.workers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--gap-ms", type=float, default=0.0)
    ap.add_argument("--server-procs", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    import ray
    import ray_cluster

    from perfkit import kinds as backends
    from perfkit.cluster import Cluster
    from perfkit.core.schema import ClusterParams

    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores", flush=True)
    rc = ray_cluster.start()
    out: dict[str, list[dict]] = {"this process": [], "1 client node": [], "2 client nodes": []}
    try:
        with SSEServer(procs=a.server_procs, first_ms=1.0, gap_ms=a.gap_ms, tokens=a.tokens) as server, \
                Cluster(ClusterParams(address=rc.address, clients=2)) as cl:
            b = backends.create("openai", server.url, inspect_host=False)
            two = cl.clients()
            from perfkit.cluster import ClientShares

            one = ClientShares(two.clients[:1], timeout_s=600)
            _series(b, None, a.streams, a.streams, a.tokens)  # warm: connections, imports
            _series(b, one, a.streams, a.streams, a.tokens)
            _series(b, two, a.streams, a.streams, a.tokens)
            for rep in range(a.reps):
                for name, shares in (("this process", None), ("1 client node", one), ("2 client nodes", two)):
                    r = _series(b, shares, a.streams, a.requests, a.tokens)
                    out[name].append(r)
                    print(f"rep {rep + 1} {name:15s} {r['tok_s']:9.0f} tok/s  ok {r['ok']}/{r['requests']}  "
                          f"loop busy {r['loop_busy']:.0%}  {r['reason'] or 'not client-bound'}", flush=True)
            b.close()
    finally:
        ray.shutdown()
        rc.shutdown()
    print(f"\n{a.streams} streams, {a.requests} requests × {a.tokens} tokens, server gap {a.gap_ms:g} ms, "
          f"{a.server_procs} server process(es); median of {a.reps}:")
    for name, rows in out.items():
        rates = [r["tok_s"] for r in rows]
        print(f"  {name:15s} {statistics.median(rates):9.0f} tok/s (min {min(rates):.0f}, max {max(rates):.0f}); "
              f"client-bound in {sum(r['client_bound'] for r in rows)}/{len(rows)}")
    print(f"load average at end: {os.getloadavg()[0]:.2f} (1 min)")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
