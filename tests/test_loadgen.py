"""The request engine against scripted servers: connection reuse, no think time, schedules kept,
the client-bound flag. Fixed latencies come from the fake server; the checks allow for a busy machine."""

import threading
import time

from fake_openai import FakeOpenAI
from perfkit.kinds.ollama import OllamaBackend
from perfkit.kinds.openai import OpenAIBackend
from perfkit.client.backends import Sampling
from perfkit.client.loadgen import Job, run_series
from perfkit.analysis.series import steady_window
from perfkit.measure.runner import Runner, schedule
from perfkit.core.store import RunStore


def test_sequential_requests_share_one_connection_and_connect_is_outside_ttft():
    with FakeOpenAI(token_gap_s=0.001) as f:
        b = OpenAIBackend(f.url)
        recs = [b.generate("good", f"hi {i}", Sampling(num_predict=5)) for i in range(6)]
        b.close()
    assert all(r.ok for r in recs), [r.error for r in recs]
    assert f.connections == 1
    assert recs[0].conn_reused is False and recs[0].connect_s > 0
    assert all(r.conn_reused and r.connect_s is None for r in recs[1:])
    # TTFT counts from the request's send, after the connection was open.
    assert recs[0].t_start_ns + int(recs[0].connect_s * 1e9) <= recs[0].t_send_ns


def test_a_connection_the_server_closed_while_idle_is_replaced_not_a_failure():
    with FakeOpenAI(token_gap_s=0.001) as f:
        b = OpenAIBackend(f.url)
        first = b.generate("drop-idle", "a", Sampling(num_predict=3))
        time.sleep(0.2)
        second = b.generate("drop-idle", "b", Sampling(num_predict=3))
    assert first.ok and second.ok, second.error
    assert not first.stale_retry and second.stale_retry and second.conn_reused is False
    assert f.connections == 2 and second.first_error  # resent on a new connection, the first attempt kept


def test_ollama_requests_reuse_the_connection_too(fake_ollama):
    b = OllamaBackend(fake_ollama.url)
    recs = [b.generate("good", "hi", Sampling(num_predict=3)) for _ in range(4)]
    assert all(r.ok for r in recs) and [r.conn_reused for r in recs] == [False, True, True, True]


def test_closed_loop_has_no_think_time():
    with FakeOpenAI(fixed_latency_s=0.1) as f:
        b = OpenAIBackend(f.url)
        jobs = [Job(b.target, b.stream_call("fixed", f"p{i}", Sampling(num_predict=1))) for i in range(48)]
        recs, check = run_series(jobs, concurrency=8, timeout_s=30)
    assert all(r.ok for r in recs), [r.error for r in recs if not r.ok][:3]
    import pandas as pd
    w = steady_window(pd.DataFrame([r.as_dict() for r in recs]), 8)
    assert w["steady"] and w["achieved_concurrency"] >= 0.95 * 8, w
    assert check.think_p99_s < 0.01 and f.max_in_flight == 8
    assert check.new_connections == 8  # one per stream, reused after


def test_open_loop_keeps_its_schedule_under_a_slow_server():
    with FakeOpenAI(fixed_latency_s=1.0) as f:
        b = OpenAIBackend(f.url)
        offsets = schedule("constant", 20.0, 20)
        jobs = [Job(b.target, b.stream_call("fixed", f"p{i}", Sampling(num_predict=1)), off)
                for i, off in enumerate(offsets)]
        recs, check = run_series(jobs, timeout_s=30)
    assert all(r.ok for r in recs)
    # Every request left on time although none had finished: nothing waited for a free slot.
    assert f.max_in_flight == 20
    assert max(r.send_lag_s for r in recs) < 0.05, [round(r.send_lag_s, 3) for r in recs]
    gaps = [b.t_scheduled_ns - a.t_scheduled_ns for a, b in zip(recs, recs[1:])]
    assert all(abs(g - 50_000_000) < 1000 for g in gaps)
    assert all(r.ttft_sched_s >= r.ttft_s for r in recs)


def test_a_starved_client_flags_itself():
    stop = threading.Event()

    def hog():  # holds the GIL in long pure-Python stretches: the loop can't stamp tokens on time
        while not stop.is_set():
            sum(i * i for i in range(200_000))

    with FakeOpenAI(token_gap_s=0.005, tokens=40) as f:
        b = OpenAIBackend(f.url)
        jobs = [Job(b.target, b.stream_call("good", f"p{i}", Sampling(num_predict=40))) for i in range(8)]
        threads = [threading.Thread(target=hog, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            _, check = run_series(jobs, concurrency=4, timeout_s=60)
        finally:
            stop.set()
    assert check.client_bound and check.reason.startswith("client-bound: figures unreliable"), check


def test_runner_series_store_client_check_and_steady_window(tmp_path):
    with FakeOpenAI(fixed_latency_s=0.05) as f:
        r = Runner(OpenAIBackend(f.url), RunStore(tmp_path), progress=False)
        df = r.closed_loop("fixed", 4, 20, series="c4", sampling=Sampling(num_predict=1))
        od = r.open_loop("fixed", 40.0, 20, series="o40", arrivals="constant", sampling=Sampling(num_predict=1))
    assert len(df) == 20 and df["ok"].all() and df["stream"].nunique() == 4
    assert od["ttft_sched_s"].notna().all() and od["scheduled_s"].is_monotonic_increasing
    ev = RunStore(tmp_path).events()
    done = ev[ev["kind"] == "series_done"].set_index("series")
    for s in ("c4", "o40"):
        assert done.loc[s, "client_loop_busy"] >= 0 and "client_client_bound" in done
        assert done.loc[s, "achieved_concurrency"] > 0 and done.loc[s, "steady"]
    assert not (tmp_path / "spool" / "c4.a0.bin").exists()  # removed once the series is stored


def test_a_killed_series_keeps_what_it_measured(tmp_path):
    """The spool written as each response ends is stored, flagged interrupted, when the series is re-run."""
    with FakeOpenAI(fixed_latency_s=0.02) as f:
        b = OpenAIBackend(f.url)
        r = Runner(b, RunStore(tmp_path), progress=False)
        # Simulate a kill after the spool got 5 responses: run the jobs, spool them, never store the series.
        from perfkit.measure.runner import _Spool

        r.store.event("series_start", series="c2", attempt=0, mode="closed", concurrency=2)
        jobs = r._jobs("fixed", "c2", [0.0] * 5, Sampling(num_predict=1), 48)(0)
        spool = _Spool(r._spool_path("c2", 0))
        run_series(jobs, concurrency=2, timeout_s=30, on_done=spool.write)
        spool.close()
        df = r.closed_loop("fixed", 2, 6, series="c2", sampling=Sampling(num_predict=1))
    assert len(df) == 6 and (df["attempt"] == 1).all()
    rows = RunStore(tmp_path).trials()
    old = rows[rows["attempt"] == 0]
    assert len(old) == 5 and old["interrupted"].all() and old["ok"].all()


def test_worker_processes_split_the_streams_on_one_clock():
    with FakeOpenAI(fixed_latency_s=0.1) as f:
        b = OpenAIBackend(f.url)
        jobs = [Job(b.target, b.stream_call("fixed", f"p{i}", Sampling(num_predict=1))) for i in range(24)]
        recs, check = run_series(jobs, concurrency=6, timeout_s=30, workers=2)
    assert all(r.ok for r in recs) and check.workers == 2 and f.max_in_flight == 6
    assert sorted({r.stream for r in recs}) == list(range(6))
    # Stamps from both processes are on the parent's clock: every request sits inside one span.
    t0, t1 = min(r.t_send_ns for r in recs), max(r.t_end_ns for r in recs)
    assert (t1 - t0) / 1e9 < 2.0 and all(r.e2e_s >= 0.1 for r in recs)


def test_a_reused_connection_dying_after_the_server_had_the_request_is_a_failure_not_a_resend():
    """A server that dies during a load or prefill (Ollama sends its headers with the first token) is not a
    stale connection: the request is not sent again, so its cold reload can't hide inside a warm series."""
    with FakeOpenAI(token_gap_s=0.001) as f:
        b = OpenAIBackend(f.url)
        first = b.generate("die-later", "a", Sampling(num_predict=3))
        second = b.generate("die-later", "b", Sampling(num_predict=3))
    assert first.ok and not second.ok and not second.stale_retry
    assert second.error.startswith("server connection lost") and len(f.requests) == 2


def test_a_resend_keeps_the_first_attempts_error_and_time():
    with FakeOpenAI(token_gap_s=0.001) as f:
        b = OpenAIBackend(f.url)
        b.generate("drop-idle", "a", Sampling(num_predict=3))
        time.sleep(0.2)
        second = b.generate("drop-idle", "b", Sampling(num_predict=3))
    assert second.ok and second.stale_retry
    assert second.first_error.startswith("server connection lost") and 0 <= second.first_error_after_s < 0.02


def test_tokens_packed_into_events_give_the_same_throughput_and_itl_as_one_per_event():
    """vLLM packs several tokens into one SSE event when its API server falls behind: throughput and ITL
    count tokens (the server's usage), so they match a one-token-per-event server at the same token rate."""
    import pandas as pd

    from perfkit.analysis import series
    from perfkit.analysis.requests import per_request_itl

    out = {}
    for model, pack in (("good", 1), ("packed", 4)):
        with FakeOpenAI(token_gap_s=0.01, tokens=40, pack=pack) as f:
            b = OpenAIBackend(f.url)
            jobs = [Job(b.target, b.stream_call(model, f"p{i}", Sampling(num_predict=40))) for i in range(8)]
            recs, _ = run_series(jobs, concurrency=2, timeout_s=30)
            b.close()
        df = pd.DataFrame([r.as_dict() for r in recs])
        assert df["ok"].all()
        tp = series.throughput(df, series.steady_window(df, 2))
        itl = float(pd.Series(per_request_itl(df, "median")).median())
        events = float(df["token_times_ns"].map(len).mean())
        out[model] = (tp.value, itl, events)
    (tp1, itl1, ev1), (tp4, itl4, ev4) = out["good"], out["packed"]
    assert ev4 < ev1 / 3  # the packed server really sent fewer events
    assert abs(tp4 / tp1 - 1) < 0.05, out
    assert abs(itl4 / itl1 - 1) < 0.05, out
    print(f"one token per event: {tp1:.1f} tok/s, ITL {itl1 * 1e3:.2f} ms, {ev1:.0f} events; four per event: "
          f"{tp4:.1f} tok/s, ITL {itl4 * 1e3:.2f} ms, {ev4:.0f} events")
