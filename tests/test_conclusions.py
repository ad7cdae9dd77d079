"""Conclusions claim only what their numbers carry: each study's text generated from adversarial recorded data
(scheme A slower than warm, a proxy faster than the server behind it, a busy client whose error is far below
the figures, warmups that can't be told apart) never asserts the opposite of its own figures."""

import json

import numpy as np
import pytest
import yaml

from perfkit.analysis import capacity
from perfkit.core.store import RunStore
from perfkit.studies.base import StudyContext

MODEL = "smollm2-135m-q4_1"


def _spread(median: float, n: int, seed: int) -> list[float]:
    return list(median * np.exp(np.random.default_rng(seed).normal(0, 0.03, n)))


def _ctx(tmp_path, study: str, section: dict) -> StudyContext:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"name": "adv", "studies": {study: section}}))
    return StudyContext(tmp_path / "params.yaml", tmp_path, study, check_models=False)


def _trial(tid: str, e2e: float, **extra) -> dict:
    return {"trial_id": tid, "model": MODEL, "ok": True, "warmup": False, "e2e_s": e2e, "ttft_s": 0.8 * e2e,
            "load_s": 0.0, "prefill_s": 0.1 * e2e, "decode_s": 0.6 * e2e, "overhead_s": 0.1 * e2e,
            "decode_tok_s": 100.0, "itl_s": [0.01] * 5, "state_verified": True, "t_send_ns": 0,
            "t_end_ns": int(e2e * 1e9), **extra}


def test_scheme_a_slower_than_warm_is_never_called_warm_speed(tmp_path):
    store = RunStore(tmp_path / "cold_start")
    for i, e in enumerate(_spread(1.0, 8, 1)):
        store.append_trial(_trial(f"state/warm/rep{i}", e, cache_state="warm", variant="warm"))
    for i, e in enumerate(_spread(3.5, 8, 2)):
        store.append_trial(_trial(f"scheme_a/delay0.5/rep{i}", e, cache_state="cold_server", strategy="scheme_a",
                                  scheme_a_delay_s=0.5, restart_ready_s=0.2, warm_after_s=5.0,
                                  preload_done_at_send=False, variant="scheme A"))
    store.write_manifest(study="cold_start")
    ctx = _ctx(tmp_path, "cold_start", {"model": MODEL, "states": ["warm"], "scheme_a_delays_s": [0.5],
                                        "scheme_a_reps": 8})
    text = ctx.study.conclusions(ctx.study.analyze(ctx))
    line = next(ln for ln in text.splitlines() if "Scheme A" in ln)
    assert "warm speed" not in line and "finished before it in 0% of trials" in line
    assert "not distinguishable" not in line and "3." in line  # 3.5× as long as a warm request, said as such


def test_a_proxy_faster_than_its_server_is_suspect_not_a_finding(tmp_path):
    store = RunStore(tmp_path / "fleet")
    for i, (d, p) in enumerate(zip(_spread(0.10, 8, 3), _spread(0.04, 8, 4))):
        for target, ttft in (("direct", d), ("proxy", p)):
            store.append_trial({"trial_id": f"overhead/off/{target}/{i}", "phase": "overhead", "target": target,
                                "buffering": "off", "ok": True, "warmup": False, "cache_state": "warm",
                                "ttft_s": ttft, "e2e_s": ttft + 0.2})
    store.write_manifest(study="fleet", fleet={"servers": [], "managed": True})
    ctx = _ctx(tmp_path, "fleet", {"model": MODEL})
    text = ctx.study.conclusions(ctx.study.analyze(ctx))
    line = next(ln for ln in text.splitlines() if "Proxy overhead" in ln)
    assert "suspect data" in line and "added to TTFT" not in line


def _series(store: RunStore, series: str, conc: int, ttft: float, gap: float, busy: float, lag: float) -> None:
    t, rows = 0, []
    for i in range(4 * conc):
        times = [t + int((ttft + k * gap) * 1e9) for k in range(10)]
        rows.append({"trial_id": f"{series}/a0/{i}", "series": series, "attempt": 0, "mode": "closed", "ok": True,
                     "warmup": False, "cache_state": "warm", "config": "defaults", "config_index": 0,
                     "concurrency": conc, "stream": i % conc, "t_send_ns": t, "t_end_ns": times[-1],
                     "ttft_s": ttft, "e2e_s": (times[-1] - t) / 1e9, "tpot_s": gap, "token_times_ns": times,
                     "itl_s": [gap] * 9, "output_tokens": 10, "output_tokens_source": "server", "decode_tok_s": 1 / gap})
        t = times[-1] if i % conc == conc - 1 else t
    store.extend_trials(rows)
    store.event("series_done", series=series, attempt=0, t_start_ns=rows[0]["t_send_ns"],
                t_end_ns=max(r["t_end_ns"] for r in rows), steady=False, client_client_bound=True,
                client_loop_busy=busy, client_loop_lag_p99_s=lag, client_loop_lag_max_s=lag,
                client_reason="client-bound: figures unreliable (loop thread 90% busy)")


@pytest.mark.parametrize("gap,moves", [(0.05, False), (0.01, True)])
def test_a_busy_client_is_blamed_only_for_the_figures_its_error_can_move(tmp_path, gap, moves):
    store = RunStore(tmp_path / "config_tuning")
    _series(store, "cfg0/c1", 1, ttft=0.5, gap=gap, busy=0.9, lag=0.001)
    store.write_manifest(study="config_tuning")
    ctx = _ctx(tmp_path, "config_tuning", {"model": MODEL, "settings": [{}], "concurrency": [1], "requests": 4})
    res = ctx.study.analyze(ctx)
    text = ctx.study.conclusions(res)
    assert "are the client's" not in text
    if moves:  # a 1 ms lag is 10% of a 10 ms ITL
        assert "can shift ITL" in text and "TTFT unaffected" in text
    else:  # and 2% of a 50 ms ITL, 0.2% of a 500 ms TTFT
        assert "too little to change those figures" in text and "can shift" not in text


def test_warmups_that_cannot_be_told_apart_are_not_ranked(tmp_path):
    store = RunStore(tmp_path / "cold_start")
    for s, seed in (("none", 5), ("preload", 6)):
        for i, e in enumerate(_spread(0.5, 3, seed)):  # n=3: too few for any CI of a ratio
            store.append_trial(_trial(f"strategy/{s}/gap1/rep{i}", e, cache_state="warm", strategy=s, idle_gap_s=1.0,
                                      keep_alive_s=300.0, loaded_at_send=True, variant=s))
    store.write_manifest(study="cold_start")
    ctx = _ctx(tmp_path, "cold_start", {"model": MODEL, "states": ["warm"], "strategies": ["none", "preload"]})
    text = ctx.study.conclusions(ctx.study.analyze(ctx))
    line = next(ln for ln in text.splitlines() if "idle gap" in ln)
    assert "no strategy is distinguishable" in line and "is faster than" not in line
    assert json.dumps(text)  # plain text, nothing unserializable


def _open_rows(rate: float, ttft_sched_s: float, n: int = 10, service_s: float | None = None) -> list[dict]:
    """n requests scheduled at ``rate``; each ends ``ttft_sched_s`` + 0.1 s after its schedule, or, with
    ``service_s``, the server serves them one at a time taking that long each (a queue when it exceeds 1/rate)."""
    out, free_ns = [], 0
    for k in range(n):
        t = int(k / rate * 1e9)
        end = t + int((ttft_sched_s + 0.1) * 1e9)
        if service_s is not None:
            end = free_ns = max(free_ns, t) + int(service_s * 1e9)
        out.append({"mode": "open", "config_index": 0, "config": "NUM_PARALLEL=1", "rate_rps": rate, "attempt": 0,
                    "ok": True, "ttft_sched_s": (end - t) / 1e9 - 0.1 if service_s else ttft_sched_s,
                    "tpot_s": 0.01, "e2e_sched_s": (end - t) / 1e9, "t_scheduled_ns": t, "t_end_ns": end})
    return out


@pytest.mark.parametrize("ttfts, expect_next, says", [
    ({1.0: 0.2, 2.0: 0.3}, 4.0, "at least 2.00 req/s"),         # every rate sustained: the limit lies above
    ({1.0: 0.2, 2.0: 5.0}, 1.4, "1.00 req/s sustained, 2.00 req/s not (0% inside"),  # bracketed, split at √2
    ({1.0: 0.2, 1.4: 5.0}, None, "1.00 req/s sustained, 1.40 req/s not (0% inside"),  # within 1.5×: found
    ({1.0: 5.0, 2.0: 6.0}, 0.5, "below 1.00 req/s"),              # none sustained
])
def test_the_sweep_searches_until_it_brackets_the_limit_and_says_what_it_found(ttfts, expect_next, says):
    import pandas as pd

    from perfkit.core.schema import Slo
    from perfkit.studies import config_tuning as ct

    slo = Slo(ttft_s=1.0, tpot_s=0.1)
    df = pd.DataFrame([r for rate, t in ttfts.items() for r in _open_rows(rate, t)])
    assert ct.next_rate(df, 0, slo) == expect_next
    rt = pd.DataFrame([{"config": "NUM_PARALLEL=1", "rate_rps": rate, "kept_up": 1.0, "n": 10,
                        "meets_slo_share": float(capacity.meets_slo(df[df["rate_rps"] == rate], slo).mean()),
                        "sustained": capacity.sustains(df[df["rate_rps"] == rate], slo)} for rate in ttfts])
    text = ct.rate_conclusion(rt, slo.model_dump())
    assert says in text and "TTFT ≤ 1.00 s and TPOT ≤ 100 ms" in text and "10 requests per rate" in text, text
    if expect_next == 4.0:
        assert "every rate tried was sustained" in text


def test_a_short_burst_above_capacity_is_not_called_sustained():
    """8 requests at 4 req/s on a server that serves 2 req/s: each meets a 2.5 s TTFT SLO (the queue never grows
    long enough to miss it), but each waited longer than the one before: not sustained."""
    import pandas as pd

    from perfkit.analysis import series as S
    from perfkit.core.schema import Slo
    from perfkit.studies import config_tuning as ct

    slo = Slo(ttft_s=2.5, tpot_s=0.1)
    over = pd.DataFrame(_open_rows(4.0, 0, n=8, service_s=0.5))
    under = pd.DataFrame(_open_rows(1.0, 0, n=8, service_s=0.5))
    assert capacity.meets_slo(over, slo).all()
    assert S.kept_up(over) < 0.7 and not capacity.sustains(over, slo)
    assert S.kept_up(under) == pytest.approx(1.0) and capacity.sustains(under, slo)
    rt = pd.DataFrame([{"config": "NUM_PARALLEL=1", "rate_rps": r, "meets_slo_share": 1.0, "kept_up": S.kept_up(g),
                        "sustained": capacity.sustains(g, slo)} for r, g in ((1.0, under), (4.0, over))])
    text = ct.rate_conclusion(rt, slo.model_dump())
    assert "1.00 req/s sustained, 4.00 req/s not (the server fell behind" in text, text
    assert S.kept_up(over) == pytest.approx(0.5, abs=0.02)  # a server at half the offered rate


def test_an_html_error_page_is_said_by_its_title_never_shown_as_source():
    import pandas as pd

    from perfkit.analysis.requests import error_summary, failures

    page = ("HTTP 504: <html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body><center><h1>504 Gateway "
            "Time-out</h1></center><hr><center>nginx</center></body></html>")
    assert error_summary(page) == "HTTP 504: an HTML error page: 504 Gateway Time-out"
    assert error_summary("x" * 200).endswith("…") and len(error_summary("x" * 200)) == 80
    note = failures(pd.DataFrame({"ok": [False, False, True], "error": [page, page, None]}))
    assert "504 Gateway Time-out (×2)" in note and "<center>" not in note and "&lt;" not in note
