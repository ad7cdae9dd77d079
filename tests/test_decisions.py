"""The error rates of perfkit's decision statements, proven by simulation.

Each statement a report makes — "worse" for a tail or for failures, "best setting", "fell behind" — is checked
under the null (nothing differs but run-to-run noise: a per-restart shift of the whole distribution, as
bench/aa_verdicts measured on the embedded engine) for its false-call rate, and under named effects for its power.
Every test prints its figures (pytest -s shows them), so the closing figures of a change are reproducible with
``.venv/bin/pytest -s tests/test_decisions.py``.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import pandas as pd
import pytest

from perfkit.analysis import figures as F
from perfkit.analysis import series as S
from perfkit.analysis import verdicts as V
from perfkit.analysis.capacity import NOT_SUSTAINED, SUSTAINED, rate_verdict
from perfkit.analysis.decisions import best_of, holm

SHIFT_SD = 0.04  # the per-restart shift of a whole run's latencies (log scale), as measured between A/A runs


def _latencies(rng, n, scale=1.0):
    """TTFT-like values: lognormal around 300 ms, times a per-run shift."""
    return rng.lognormal(math.log(0.3 * scale) + rng.normal(0, SHIFT_SD), 0.25, n)


def _false_rate(called: list[bool]) -> float:
    return float(np.mean(called))


# ---- tails and failures --------------------------------------------------------------------------------------

def test_a_slow_tail_is_worse_on_its_percentile_and_no_median_row_is_called():
    rng = np.random.default_rng(7)
    a, b = _latencies(rng, 200), _latencies(rng, 200)
    b[rng.choice(200, 10, replace=False)] *= 4  # 5 % of after 4× slower
    tail = V.compare_tail(a, b, "p99", "lower", min_effect=V.MIN_EFFECT)
    median = V.compare_samples(a, b, "lower", min_effect=V.MIN_EFFECT)
    assert tail.verdict == V.WORSE, tail.reason
    assert "of after's 200 requests lie beyond" in tail.reason
    assert median.verdict == V.NO_CHANGE


def test_failures_kept_in_the_tail_make_it_worse_and_the_failed_share_worse():
    rng = np.random.default_rng(8)
    a, b = _latencies(rng, 79), _latencies(rng, 79)
    b[:7] = math.inf  # 7 of 79 failed
    assert V.compare_tail(a, b, "p99", "lower", min_effect=V.MIN_EFFECT).verdict == V.WORSE
    share = V.compare_shares([0.0] * 79, [1.0] * 7 + [0.0] * 72, "lower")
    assert share.verdict == V.WORSE and share.change_text.startswith("+8.9 pp"), share.change_text


def test_a_censored_tail_on_both_sides_is_left_to_the_failed_share():
    a = [0.3] * 50 + [math.inf] * 2
    b = [0.3] * 50 + [math.inf] * 3
    row = V.compare_tail(a, b, "p99", "lower")
    assert row.verdict == V.NO_CHANGE and "failed share" in row.reason


def test_a_tail_too_thin_to_judge_says_not_measurable():
    row = V.compare_tail([0.3, 0.31, 0.29], [0.9, 0.95, 0.93], "p99", "lower")
    assert row.verdict == V.NO_CHANGE and row.reason.startswith("not measurable at this n")


@pytest.mark.parametrize("n", [20, 80])
def test_tail_and_failure_rows_hold_their_false_call_rate_under_the_null(n):
    rng = np.random.default_rng(n)
    trials = 600
    calls = {"p90": [], "p99": [], "failed": []}
    for _ in range(trials):
        a, b = _latencies(rng, n), _latencies(rng, n)
        fa, fb = rng.random(n) < 0.03, rng.random(n) < 0.03  # the same 3 % failure rate on both sides
        a[fa], b[fb] = math.inf, math.inf
        for s in ("p90", "p99"):
            calls[s].append(V.compare_tail(a, b, s, "lower", min_effect=V.MIN_EFFECT).called)
        calls["failed"].append(V.compare_shares(fa.astype(float), fb.astype(float), "lower").called)
    rates = {k: _false_rate(v) for k, v in calls.items()}
    print(f"\nA/A false calls at n={n} per side, {trials} pairs: " + ", ".join(f"{k} {v:.1%}" for k, v in rates.items()))
    assert all(r <= 0.05 for r in rates.values()), rates


def test_power_for_a_slow_tail_and_more_failures_is_stated():
    """A 1.5× tail (10 % of requests) and 5 % more failures, at the n a report would need for ≥ 80 % power."""
    rng = np.random.default_rng(11)
    out = {}
    for n in (40, 80, 160, 320):
        tail, fail = [], []
        for _ in range(200):
            a, b = _latencies(rng, n), _latencies(rng, n)
            slow = rng.random(n) < 0.10
            b[slow] *= 1.5 * 4  # the slow tenth moves from the body to 1.5× beyond the old p99 region
            tail.append(V.compare_tail(a, b, "p99", "lower", min_effect=V.MIN_EFFECT).verdict == V.WORSE)
            fa, fb = rng.random(n) < 0.01, rng.random(n) < 0.06
            fail.append(V.compare_shares(fa.astype(float), fb.astype(float), "lower").verdict == V.WORSE)
        out[n] = (np.mean(tail), np.mean(fail))
    print("\npower (slow tail p99, +5 pp failures) by n per side: "
          + ", ".join(f"n={n}: {t:.0%}, {f:.0%}" for n, (t, f) in out.items()))
    assert out[80][0] >= 0.8 and out[320][1] >= 0.8


def test_a_replicate_whose_tail_is_beyond_the_limit_is_compared_by_pooled_requests_and_says_so():
    rng = np.random.default_rng(3)

    def fig(runs):
        rows = pd.concat([pd.DataFrame({"ttft_s": r, "replicate": i + 1}) for i, r in enumerate(runs)])
        return F.per_request("config_tuning", "ttft_p99", rows, "ttft_s")

    fa = fig([_latencies(rng, 30) for _ in range(3)])
    bad = _latencies(rng, 30)
    bad[:8] = math.inf
    fb = fig([_latencies(rng, 30), _latencies(rng, 30), bad])
    assert math.inf in fb.replicates
    row = V.compare_figure_pair(fa, fb, runs_mode=True, min_effect=V.MIN_EFFECT)
    assert row.mode == "tail" and "can't be averaged" in row.reason and row.verdict == V.WORSE


# ---- the best setting ----------------------------------------------------------------------------------------

def _setting_figs(rng, scales, n=16):
    return {f"s{i}": F.per_request("config_tuning", "ttft", pd.DataFrame({"ttft_s": _latencies(rng, n, sc)}),
                                   "ttft_s", where={"setting": f"s{i}"}) for i, sc in enumerate(scales)}


def test_the_best_of_identical_settings_is_called_at_most_5_percent_of_the_time():
    rng = np.random.default_rng(5)
    called = [best_of(_setting_figs(rng, [1, 1, 1, 1])).called for _ in range(400)]
    rate = _false_rate(called)
    print(f"\nbest of 4 identical settings (restart shift {SHIFT_SD:.0%}), 16 requests each: called {rate:.1%}")
    assert rate <= 0.05


def test_a_clearly_better_setting_is_called_best_and_the_baseline_row_agrees():
    rng = np.random.default_rng(6)
    power = {}
    for n in (16, 32, 64):
        claims = [best_of(_setting_figs(rng, [1, 1, 1 / 1.5, 1], n)) for _ in range(100)]
        power[n] = np.mean([c.called and c.best == "s2" for c in claims])
    print("\na setting 1.5× faster among 4: called best " + ", ".join(f"{p:.0%} at {n} requests each"
                                                                      for n, p in power.items()))
    assert power[64] >= 0.8
    for c in claims:  # the baseline-vs-best row is the claim's own row: never "improved" when the claim fails
        if c.best != "s0":
            assert (c.rows["s0"].verdict == V.IMPROVED) or not c.called


def test_holm_adjusts_step_down():
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": math.nan})
    assert adj["a"] == pytest.approx(0.03) and adj["c"] == pytest.approx(0.06) and adj["b"] == pytest.approx(0.06)
    assert math.isnan(adj["d"])


# ---- fell behind ---------------------------------------------------------------------------------------------

def _queue(rng, n, rate, slots, service):
    t = np.cumsum(rng.exponential(1 / rate, n))
    t -= t[0]
    free, ends = [0.0] * slots, []
    for ti in t:
        start = max(heapq.heappop(free), ti)
        end = start + service()
        heapq.heappush(free, end)
        ends.append(end)
    ns = (t * 1e9).astype("int64") + 10**9  # a clock's stamps are positive
    e2e = np.array(ends) - t
    return pd.DataFrame({"ok": True, "t_scheduled_ns": ns, "t_send_ns": ns, "t_end_ns": ns + (e2e * 1e9).astype("int64"),
                         "e2e_sched_s": e2e})


@pytest.mark.parametrize("known_slots", [True, False], ids=["slots known", "slots estimated"])
@pytest.mark.parametrize("name, n, rate, slots, exp_service, limit", [
    ("4 slots, fixed service, ρ=0.8", 16, 3.2, 4, False, 0.05),
    ("4 slots, fixed service, ρ=0.8", 48, 3.2, 4, False, 0.05),
    ("M/M/1, ρ=0.7", 12, 0.7, 1, True, 0.08),
    ("M/M/1, ρ=0.8", 96, 0.8, 1, True, 0.05),
])
def test_fell_behind_is_rarely_called_on_a_stable_server(name, n, rate, slots, exp_service, limit, known_slots):
    rng = np.random.default_rng(n)
    service = (lambda: rng.exponential(1.0)) if exp_service else (lambda: 1.0)
    verdicts = [S.trend(_queue(rng, n, rate, slots, service), slots=slots if known_slots else None).verdict
                for _ in range(400)]
    rate_ = np.mean([v == S.FELL_BEHIND for v in verdicts])
    cant = np.mean([v == S.CANT_TELL for v in verdicts])
    print(f"\n{name}, {n} requests from an empty queue, {'slots known' if known_slots else 'slots estimated'}: "
          f"fell behind {rate_:.1%}, can't tell {cant:.1%}")
    assert rate_ <= 0.05


@pytest.mark.parametrize("known_slots", [True, False], ids=["slots known", "slots estimated"])
def test_fell_behind_is_called_on_an_overloaded_server_with_enough_requests(known_slots):
    rng = np.random.default_rng(1)
    out = {}
    for n in (16, 48, 96):
        verdicts = [S.trend(_queue(rng, n, 5.2, 4, lambda: 1.0), slots=4 if known_slots else None).verdict
                    for _ in range(200)]  # 1.3× capacity
        out[n] = np.mean([v == S.FELL_BEHIND for v in verdicts]), np.mean([v == S.KEPT_UP for v in verdicts])
    print(f"\n4 slots at 1.3× capacity ({'slots known' if known_slots else 'slots estimated'}): "
          + ", ".join(f"n={n}: fell behind {a:.0%}, kept up {b:.0%}" for n, (a, b) in out.items()))
    # conservative: it calls only with enough requests, and never the wrong way
    assert max(b for _, b in out.values()) <= 0.05
    if known_slots:
        assert out[96][0] >= 0.5


def test_the_trend_reads_a_bounded_number_of_requests():
    """The latency trend's pairwise slopes read at most TREND_MAX_POINTS requests; the capacity count is linear."""
    rng = np.random.default_rng(2)
    q = _queue(rng, 5000, 3.2, 4, lambda: 1.0)
    tr = S.trend(q.drop(columns=["t_send_ns", "t_end_ns"]))
    assert tr.n == S.TREND_MAX_POINTS and math.isfinite(tr.kept_up) and tr.method == "latency trend"
    assert S.trend(q, slots=4).n == 5000


# ---- the sustained rate: the sweep's bracket against a server of known capacity ------------------------------

def _sweep(rng, capacity_rps, slots, exp_service, *, requests=16, extend=2, steps=2, fractions=(0.6, 1.4),
           known: bool = True):
    """The open-loop sweep as config tuning runs it (rates from fractions of the capacity, extensions of a rate
    its trend can't tell, the bracket search), on a simulated FIFO server of ``slots`` slots; the bracket."""
    from perfkit.core.schema import Slo
    from perfkit.studies import config_tuning as ct

    slo = Slo(ttft_s=1e6, tpot_s=None)  # the server's capacity is the question, not an SLO
    mean_s = slots / capacity_rps
    told = slots if known else None
    service = (lambda: rng.exponential(mean_s)) if exp_service else (lambda: mean_s)
    frames = []

    def run(rate, n, series):
        q = _queue(rng, n, rate, slots, service)
        frames.append(q.assign(mode="open", config_index=0, rate_rps=rate, series=series, attempt=0,
                               ttft_sched_s=q["e2e_sched_s"], tpot_s=0.0, config="s"))
        return pd.concat(frames, ignore_index=True)

    measured_capacity = capacity_rps * rng.lognormal(0, 0.1)  # the closed loop's estimate, ±10 %
    rates = sorted({float(f"{measured_capacity * f:.2g}") for f in fractions})
    df, done = pd.DataFrame(), 0
    while rates:
        rate = rates.pop(0)
        n, series = requests, f"r{rate:g}"
        for look in range(extend + 1):
            if look:
                n, series = 2 * n, f"r{rate:g}/n{2 * n}"
            df = run(rate, n, series)
            if rate_verdict(ct.rate_rows(df, 0, rate), slo, told)[0] != S.CANT_TELL:
                break
        if not rates and done < steps:
            nxt = ct.next_rate(df, 0, slo, told)
            if nxt is not None:
                rates.append(nxt)
                done += 1
    verdicts = {r: rate_verdict(ct.rate_rows(df, 0, r), slo, told)[0] for r in sorted(df["rate_rps"].unique())}
    top = max((r for r, v in verdicts.items() if v == SUSTAINED), default=0.0)
    above = min((r for r, v in verdicts.items() if v == NOT_SUSTAINED and r > top), default=math.inf)
    return top, above


@pytest.mark.parametrize("known", [True, False], ids=["slots known", "slots estimated"])
@pytest.mark.parametrize("name, capacity, slots, exp_service", [
    ("4 slots, fixed service", 4.0, 4, False),
    ("4 slots, exponential service", 4.0, 4, True),
    ("8 slots, fixed service", 8.0, 8, False),
    ("M/M/1", 1.0, 1, True),
])
def test_the_sustained_bracket_contains_the_servers_capacity(name, capacity, slots, exp_service, known):
    rng = np.random.default_rng(21)
    trials = 100
    brackets = [_sweep(rng, capacity, slots, exp_service, known=known) for _ in range(trials)]
    miss = np.mean([not (lo <= capacity * 1.0001 and capacity <= hi * 1.0001) for lo, hi in brackets])
    closed = [hi / lo for lo, hi in brackets if lo > 0 and math.isfinite(hi)]
    print(f"\n{name}, capacity {capacity:g} req/s, {'slots known' if known else 'slots estimated'}: the bracket "
          f"misses it in {miss:.1%} of {trials} sweeps; "
          f"{len(closed)} closed brackets, median width {np.median(closed) if closed else math.nan:.2f}×")
    assert miss <= 0.10
