"""Benchmark: what the client itself costs per streamed token and how wrong its stamps are, perfkit vs GuideLLM.

    .venv/bin/python bench/client_overhead.py [--streams 1 16 64 256] [--tokens 100] [--gap-ms 5]
        [--first-ms 20] [--requests-per-stream 4] [--min-requests 20] [--server-procs 1]
        [--server-slack-us 100] [--workers 1 2] [--workers-from 256] [--no-guidellm] [--json OUT]

One zero-delay streaming server (bench/_sse_server.py: separate processes, uvloop, OpenAI SSE) sends
each token at an injected time (first after --first-ms, then one every --gap-ms) with its own
``perf_counter_ns`` stamp, taken just before the write, as the token's text. That is CLOCK_MONOTONIC,
perfkit's clock too, so per token: timing error = perfkit's receive stamp − the server's send stamp
(loopback + the client's wake-up, read and stamp); TTFT error the same for the first token; ITL error
= measured gap − the server's own gap. The server reports its lateness (stamp − intended time) and
CPU: where its p99 lateness exceeds 1 ms the row says "server-bound" and the note says whether the
server was busy (its own limit: --server-procs N spreads it over N processes, if there are cores for
them) or waited for a CPU (client and server together need more cores than the machine has).

Per stream count, closed loop, the same workload for both tools (requests = max(streams ×
--requests-per-stream, --min-requests), --tokens each):
  perfkit   OpenAIBackend.stream_call + loadgen.run_series, after a warm-up series that opens the
            connections ("new conn": opened during the measured series; worker processes open their
            own per series). CPU = the client process's, plus its worker processes' where run_series
            has ``workers``, minus a series' fixed cost (measured by a series of one one-token request
            per worker, as GuideLLM's start-up is: run_series' gc.collect, worker spawn and imports),
            ÷ tokens ("gross" in the JSON keeps it in); and the SelfCheck's loop-thread µs per chunk.
            Where run_series takes ``workers``, streams ≥ --workers-from get one row per worker count.
  GuideLLM  bench/_guidellm.py (its own venv, a subprocess; its files in results/client_overhead/
            guidellm/). Its per-token stamps are not available, so its TTFT error is its TTFT − the
            injected first delay (perfkit's is printed too, like for like); CPU = (whole process tree −
            a start-up run of 1 one-token request at the same concurrency) ÷ its output tokens, a
            difference of two ~15 s figures: ± tens of µs/token on small series.
Tokens/s = tokens ÷ (last response end − first send). With injected gaps both tools are capped by the
offered load (streams × tokens ÷ (first + (tokens − 1) × gap)); the "≥ 2× GuideLLM" goal stays
undecided where perfkit is short of 2× but at that cap. --gap-ms 0 sends tokens back to back, the
clients' own limit (several tokens then share a read, so "loop µs/chk" is per read, not per token).

Columns: tokens/s and the offered load; client CPU µs per token; perfkit's loop-thread µs per chunk;
timing error p50/p99 and TTFT error p99 (receive − server stamp, perfkit); TTFT − injected first
delay p50/p99 (both tools); ITL median measured (the injected gap in the header); ITL |error| p99
(perfkit); the server's lateness p99 and busiest process's CPU share; flags. Goals, per perfkit row:
≤ 20 µs client CPU per token; TTFT error p99 ≤ 1 ms at 64 streams (where the server is not
saturated); ≥ 2 × GuideLLM's token rate. "client-bound" wherever perfkit's self-check says so or its
timing error p99 exceeds 1 ms (for GuideLLM: its TTFT − injected p99 exceeds 1 ms, server on time).
The machine's load average is printed at the start and the end: the figures are only as good as the
machine is quiet.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# perfkit itself is imported inside functions: spawned processes re-import this file and stay lean.
from bench._sse_server import SSEServer, pct  # noqa: E402

GOAL_CPU_US = 20.0
GOAL_TTFT_ERR_US = 1000.0
GOAL_TTFT_STREAMS = 64
GOAL_RATE_X = 2.0
SERVER_LATE_US = 1000.0
OTHERS_CORES = 0.2  # other processes' CPU beyond this (in cores) during a series: "machine busy"
# ~32 words, like GuideLLM's prompt_tokens=32 below: the request bodies are the same size.
PROMPT = " ".join(["lorem ipsum dolor sit amet consectetur adipiscing elit"] * 4)
PROMPT_TOKENS = 32


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: %.2f, %.2f, %.2f" % os.getloadavg()


# ---- client CPU -------------------------------------------------------------------------------------
class _CPU:
    """This process's CPU plus its children's other than the server's: run_series' worker processes are
    reaped before it returns (RUSAGE_CHILDREN), live ones are read through psutil. Exact as long as no
    child other than those started inside the window is reaped inside it."""

    def __init__(self, exclude: set[int]):
        self.exclude = exclude

    def snap(self) -> tuple[float, float, dict[int, float]]:
        import psutil

        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        live = {}
        for p in psutil.Process().children(recursive=True):
            if p.pid in self.exclude:
                continue
            try:
                t = p.cpu_times()
                live[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return time.process_time(), ru.ru_utime + ru.ru_stime, live

    @staticmethod
    def delta(a, b) -> float:
        return (b[0] - a[0]) + (b[1] - a[1]) + sum(v - a[2].get(pid, 0.0) for pid, v in b[2].items())


def _machine_cpu_s() -> float:
    """Every process's user + system CPU on the machine so far (the rest of /proc/stat is idle, I/O
    wait and interrupt time)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system


def _others(m0: float, t0: float, client_cpu_s: float, server_cpu_s: float) -> float:
    """Cores that processes other than this client and the server kept busy meanwhile."""
    wall = time.perf_counter() - t0
    return max(0.0, _machine_cpu_s() - m0 - client_cpu_s - server_cpu_s) / wall if wall > 0 else math.nan


def _med(xs) -> float:
    return statistics.median(xs) if xs else math.nan


def _has_workers() -> bool:
    from perfkit.client.loadgen import run_series

    return "workers" in inspect.signature(run_series).parameters


def offered_tok_s(streams: int, a) -> float:
    per_req_s = (a.first_ms + (a.tokens - 1) * a.gap_ms) / 1e3
    return streams * a.tokens / per_req_s if a.gap_ms > 0 and per_req_s > 0 else math.inf


# ---- perfkit ----------------------------------------------------------------------------------------
def run_perfkit(server: SSEServer, streams: int, n_req: int, a, workers: int) -> dict:
    from perfkit.client.backends.base import Sampling
    from perfkit.kinds.openai import OpenAIBackend
    from perfkit.client.loadgen import Job, run_series

    be = OpenAIBackend(server.url)
    kw = {"workers": workers} if _has_workers() else {}
    timeout_s = 60 + 10 * (a.first_ms + a.tokens * a.gap_ms) / 1e3
    cpu = _CPU(set(server.pids))

    def jobs(n: int, tokens: int) -> list:
        return [Job(be.target, be.stream_call("bench", PROMPT, Sampling(num_predict=tokens))) for _ in range(n)]

    try:
        run_series(jobs(streams, 2), concurrency=streams, timeout_s=timeout_s, **kw)  # connections opened here
        # A series' fixed cost is no per-token cost: run_series collects garbage first (~50 ms of CPU
        # with perfkit's imports loaded), worker processes are spawned per series (interpreter,
        # imports). Measured as GuideLLM's start-up is, with one one-token request (one per worker),
        # and taken off the same way.
        c0 = cpu.snap()
        run_series(jobs(workers, 1), concurrency=workers, timeout_s=timeout_s, **kw)
        startup_cpu_s = cpu.delta(c0, cpu.snap())
        js = jobs(n_req, a.tokens)  # set-up (request bodies) outside the CPU window
        server.reset()
        m0, t0, c0 = _machine_cpu_s(), time.perf_counter(), cpu.snap()
        recs, check = run_series(js, concurrency=streams, timeout_s=timeout_s, **kw)
        cpu_s = cpu.delta(c0, cpu.snap())
        srv = server.stats()
        others = _others(m0, t0, cpu_s, srv["cpu_s"])
    finally:
        be.close()

    ok = [r for r in recs if r.ok]
    err, ttft_err, itl_err, itl, ttft_inj, mismatched = [], [], [], [], [], 0
    for r in ok:
        stamps = [int(x) for x in r.text.split()]
        tt = r.token_times_ns
        if len(stamps) != len(tt) or not tt:
            mismatched += 1
            continue
        e = [got - sent for got, sent in zip(tt, stamps)]
        err += e
        ttft_err.append(e[0])
        itl_err += [abs(e[i + 1] - e[i]) for i in range(len(e) - 1)]  # (Δreceive − Δsend) = Δerror
        itl += r.itl_s
        ttft_inj.append(r.ttft_s - a.first_ms / 1e3)
    err.sort(), ttft_err.sort(), itl_err.sort(), ttft_inj.sort()
    tokens = sum(len(r.token_times_ns) for r in ok)
    span_s = (max(r.t_end_ns for r in ok) - min(r.t_send_ns for r in ok)) * 1e-9 if ok else math.nan
    work_cpu_s = cpu_s - startup_cpu_s
    return {
        "tool": "perfkit", "streams": streams, "workers": check.workers if kw else 1, "requests": len(recs),
        "failed": len(recs) - len(ok), "errors": sorted({r.error for r in recs if not r.ok})[:3],
        "stamp_mismatch": mismatched, "tokens": tokens, "span_s": span_s, "tok_s": tokens / span_s if ok else math.nan,
        "offered_tok_s": offered_tok_s(streams, a),
        "cpu_s": cpu_s, "startup_cpu_s": startup_cpu_s,
        "cpu_us_per_token": 1e6 * work_cpu_s / tokens if tokens else math.nan,
        "cpu_us_per_token_gross": 1e6 * cpu_s / tokens if tokens else math.nan,
        "loop_us_per_chunk": check.cpu_us_per_chunk,
        "err_us_p50": pct(err, 0.5) / 1e3, "err_us_p99": pct(err, 0.99) / 1e3,
        "err_us_max": err[-1] / 1e3 if err else math.nan,
        "ttft_err_us_p50": pct(ttft_err, 0.5) / 1e3, "ttft_err_us_p99": pct(ttft_err, 0.99) / 1e3,
        "ttft_minus_inj_ms_p50": pct(ttft_inj, 0.5) * 1e3, "ttft_minus_inj_ms_p99": pct(ttft_inj, 0.99) * 1e3,
        "itl_ms_median": _med(itl) * 1e3, "itl_abs_err_us_median": pct(itl_err, 0.5) / 1e3,
        "itl_abs_err_us_p99": pct(itl_err, 0.99) / 1e3,
        "new_connections": check.new_connections, "self_check": check.as_dict(), "server": srv,
        "others_cores": others,
    }


# ---- GuideLLM ---------------------------------------------------------------------------------------
def run_guidellm_row(server: SSEServer, streams: int, n_req: int, a) -> dict:
    from bench._guidellm import run_guidellm

    out = ROOT / "results" / "client_overhead" / "guidellm" / f"c{streams}"
    # Its start-up run (what run_guidellm's measure_startup does: same concurrency, so as many workers,
    # 1 request of 1 token) on its own, so that the server's window holds the measured run alone.
    startup = run_guidellm(server.url, concurrency=streams, requests=1, output_tokens=1,
                           prompt_tokens=PROMPT_TOKENS, out_dir=out / "startup", model="bench", measure_startup=False)
    server.reset()
    m0, t0 = _machine_cpu_s(), time.perf_counter()
    g = run_guidellm(server.url, concurrency=streams, requests=n_req, output_tokens=a.tokens,
                     prompt_tokens=PROMPT_TOKENS, out_dir=out, model="bench", measure_startup=False)
    srv = server.stats()
    others = _others(m0, t0, g["cpu_s"], srv["cpu_s"])
    g["startup_cpu_s"] = startup["cpu_s"]
    work_cpu = g["cpu_s"] - g["startup_cpu_s"]
    return {
        "tool": "guidellm", "streams": streams, "workers": g["workers"], "requests": g["completed"],
        "failed": g["errored"] + g["incomplete"], "tokens": g["output_tokens"], "span_s": g["wall_s"],
        "tok_s": g["output_tok_s"], "offered_tok_s": offered_tok_s(streams, a),
        "cpu_s": g["cpu_s"], "startup_cpu_s": g["startup_cpu_s"],
        "cpu_us_per_token": 1e6 * work_cpu / g["output_tokens"] if g["output_tokens"] else math.nan,
        "cpu_us_per_token_gross": 1e6 * g["cpu_s"] / g["output_tokens"] if g["output_tokens"] else math.nan,
        "ttft_minus_inj_ms_p50": g["ttft_ms_median"] - a.first_ms,
        "ttft_minus_inj_ms_p99": g["ttft_ms_p99"] - a.first_ms,
        "itl_ms_median": g["itl_ms_median"], "server": srv, "others_cores": others, "guidellm": g,
        "out_dir": str(out),
    }


# ---- judgement and table ----------------------------------------------------------------------------
def judge(rows: list[dict], a) -> None:
    """Flags and goal checks, in place ("notes": the full reasons behind the short flags)."""
    gl = {r["streams"]: r for r in rows if r["tool"] == "guidellm"}
    for r in rows:
        flags, notes = [], []
        late = r["server"]["late_us_p99"]
        server_bound = late > SERVER_LATE_US
        if server_bound:
            flags.append("server-bound")
            busy = r["server"]["busy_max"]
            why = "the server set the pace" if busy > 0.85 else \
                "it waited for a CPU (the cores were taken: the client, the server, anything else running)"
            notes.append(f"server late p99 {late / 1e3:.1f} ms (busiest server process {busy:.0%} busy): {why}")
        if r["others_cores"] > OTHERS_CORES:
            flags.append("machine busy")
            notes.append(f"other processes kept {r['others_cores']:.2f} cores busy meanwhile: figures disturbed")
        if r["failed"]:
            flags.append(f"{r['failed']} failed")
            notes += r.get("errors", [])
        if r.get("stamp_mismatch"):
            flags.append("stamps?")
            notes.append(f"{r['stamp_mismatch']} responses' token texts did not match their token times: left out")
        if r["tool"] == "perfkit":
            sc = r["self_check"]
            if sc["client_bound"] or r["err_us_p99"] > GOAL_TTFT_ERR_US:
                flags.append("client-bound")
                if sc["reason"]:
                    notes.append(sc["reason"])
                if r["err_us_p99"] > GOAL_TTFT_ERR_US:
                    notes.append(f"timing error p99 {r['err_us_p99'] / 1e3:.1f} ms > 1 ms")
            flags.append(("✓" if r["cpu_us_per_token"] <= GOAL_CPU_US else "✗") + f"≤{GOAL_CPU_US:g}µs/tok")
            if r["streams"] == GOAL_TTFT_STREAMS:
                if server_bound:
                    flags.append("TTFTerr≤1ms n/a (server-bound)")
                else:
                    flags.append(("✓" if r["ttft_err_us_p99"] <= GOAL_TTFT_ERR_US else "✗") + "TTFTerr≤1ms")
            g = gl.get(r["streams"])
            if g is not None and g["tok_s"] > 0:
                ratio = r["tok_s"] / g["tok_s"]
                r["rate_vs_guidellm"] = ratio
                # perfkit can't go past the offered load: short of 2× while at it says nothing
                if ratio < GOAL_RATE_X and r["tok_s"] >= 0.95 * r["offered_tok_s"]:
                    flags.append(f"{ratio:.2f}×GL (at offered load: 2× undecided)")
                else:
                    flags.append(("✓" if ratio >= GOAL_RATE_X else "✗") + f"{ratio:.2f}×GL")
        elif r["ttft_minus_inj_ms_p99"] > GOAL_TTFT_ERR_US / 1e3 and not server_bound:
            flags.append("client-bound")
            notes.append(f"GuideLLM TTFT − injected p99 {r['ttft_minus_inj_ms_p99']:.1f} ms > 1 ms")
        r["flags"], r["notes"] = flags, notes


def _f(x, spec: str, scale: float = 1.0) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "–"
    return format(x * scale, spec)


def table(rows: list[dict], a) -> str:
    cols = [("streams", 7), ("tool", 8), ("wk", 3), ("req", 5), ("tokens", 7), ("tok/s", 7), ("offered", 7),
            ("CPU µs/tok", 10), ("loop µs/chk", 11), ("err p50/p99 µs", 15), ("TTFTerr p99 µs", 14),
            ("TTFT−inj p50/p99 ms", 19),
            (f"ITL med ms (inj {a.gap_ms:g})", 20), ("ITL|err|p99 µs", 14), ("srv late p99 µs", 15),
            ("srv busy", 8), ("new conn", 8), ("flags", 0)]
    lines = ["  ".join(f"{n:>{w}}" if w else n for n, w in cols)]
    for r in rows:
        pk = r["tool"] == "perfkit"
        cells = [
            str(r["streams"]), r["tool"], str(r["workers"]), str(r["requests"]), str(r["tokens"]),
            _f(r["tok_s"], ".0f"), _f(r["offered_tok_s"], ".0f"), _f(r["cpu_us_per_token"], ".1f"),
            _f(r.get("loop_us_per_chunk"), ".1f"),
            f"{_f(r['err_us_p50'], '.0f')}/{_f(r['err_us_p99'], '.0f')}" if pk else "–",
            _f(r.get("ttft_err_us_p99"), ".0f"),
            f"{_f(r['ttft_minus_inj_ms_p50'], '.2f')}/{_f(r['ttft_minus_inj_ms_p99'], '.2f')}",
            _f(r["itl_ms_median"], ".3f"), _f(r.get("itl_abs_err_us_p99"), ".0f"),
            _f(r["server"]["late_us_p99"], ".0f"), _f(r["server"]["busy_max"], ".0%"),
            str(r["new_connections"]) if pk else "–", " ".join(r["flags"]),
        ]
        lines.append("  ".join(f"{c:>{w}}" if w else c for c, (_, w) in zip(cells, cols)))
    notes = [f"  {r['streams']} streams, {r['tool']}{'' if r['workers'] == 1 else ' ' + str(r['workers']) + ' wk'}:"
             f" {n}" for r in rows for n in r["notes"]]
    return "\n".join(lines + (["notes:"] + notes if notes else []))


def _clean(x):
    """NaN/inf as null: the JSON stays standard."""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--tokens", type=int, default=100, help="output tokens per request")
    ap.add_argument("--gap-ms", type=float, default=5.0, help="injected inter-token gap (0: back to back)")
    ap.add_argument("--first-ms", type=float, default=20.0, help="injected delay before the first token")
    ap.add_argument("--requests-per-stream", type=int, default=4)
    ap.add_argument("--min-requests", type=int, default=20, help="floor on requests per series (GuideLLM needs rounds)")
    ap.add_argument("--server-procs", type=int, default=1, help="server processes on one port (SO_REUSEPORT)")
    ap.add_argument("--server-slack-us", type=float, default=100.0,
                    help="server: tokens due within this window share a timer wake-up (see bench/_sse_server.py)")
    ap.add_argument("--workers", type=int, nargs="+", default=None,
                    help="perfkit worker counts at --workers-from streams and up (default: 1 and the CPU count, "
                         "where run_series takes workers)")
    ap.add_argument("--workers-from", type=int, default=256)
    ap.add_argument("--no-guidellm", action="store_true")
    ap.add_argument("--json", type=Path, help="write every figure here too")
    a = ap.parse_args()

    from perfkit.client.loadgen import loop_kind

    t_start = time.perf_counter()
    has_workers = _has_workers()
    if not has_workers:
        worker_counts = [1]
    else:
        worker_counts = sorted(set(a.workers or [1, os.cpu_count() or 1]))
    wk = f"{worker_counts} at ≥ {a.workers_from} streams" if has_workers else "not in run_series (1)"
    head = [f"start: {_uptime()}", f"os.cpu_count() = {os.cpu_count()}; perfkit loop: {loop_kind()}; workers: {wk}"]
    with SSEServer(procs=a.server_procs, first_ms=a.first_ms, gap_ms=a.gap_ms, tokens=a.tokens,
                   slack_us=a.server_slack_us) as server:
        head.append(f"server: {server.url}, {len(server.pids)} process(es), {server.loop}, timer {server.timer} "
                    f"(slack {a.server_slack_us:g} µs); "
                    f"injected first {a.first_ms:g} ms, gap {a.gap_ms:g} ms; {a.tokens} tokens/request")
        print("\n".join(head), flush=True)
        rows = []
        for streams in a.streams:
            n_req = max(streams * a.requests_per_stream, a.min_requests)
            for w in (worker_counts if streams >= a.workers_from else [1]):
                t0 = time.perf_counter()
                r = run_perfkit(server, streams, n_req, a, w)
                r["bench_wall_s"] = time.perf_counter() - t0
                rows.append(r)
                print(f"  {streams} streams, perfkit, {w} worker(s): {r['tokens']} tokens, {r['tok_s']:.0f} tok/s, "
                      f"{r['cpu_us_per_token']:.1f} µs/token ({r['bench_wall_s']:.1f} s)", flush=True)
            if not a.no_guidellm:
                t0 = time.perf_counter()
                r = run_guidellm_row(server, streams, n_req, a)
                r["bench_wall_s"] = time.perf_counter() - t0
                rows.append(r)
                print(f"  {streams} streams, GuideLLM: {r['tokens']} tokens, {r['tok_s']:.0f} tok/s, "
                      f"{r['cpu_us_per_token']:.1f} µs/token ({r['bench_wall_s']:.1f} s)", flush=True)
    judge(rows, a)
    tail = f"end: {_uptime()}; bench {time.perf_counter() - t_start:.0f} s"
    print()
    print(table(rows, a))
    print(tail)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
        a.json.write_text(json.dumps(_clean({"args": args, "header": head, "end": tail, "rows": rows}),
                                     indent=1, default=str))
        print(f"figures: {a.json}")


if __name__ == "__main__":
    main()
