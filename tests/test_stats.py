import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from perfkit.analysis import stats
from perfkit.analysis.figures import dumps
from perfkit.core.units import SECONDS


# ---------------------------------------------------------------------------- minimum n & ranks

@pytest.mark.parametrize("q, need", [(0.5, 6), (0.9, 29), (0.95, 59), (0.99, 299)])
def test_min_n_for_at_95(q, need):
    # 1 − q^n − (1−q)^n ≥ 0.95 first holds at these n (e.g. median: 1 − 2·0.5^6 = 0.969, 1 − 2·0.5^5 = 0.94)
    assert stats.min_n_for(q, 0.95) == need
    assert stats.order_stat_ranks(need, q, 0.95) is not None
    assert stats.order_stat_ranks(need - 1, q, 0.95) is None


def test_min_n_for_other_confidence_and_bad_input():
    assert stats.min_n_for(0.5, 0.99) == 8
    assert stats.min_n_for(0.5, 0.90) == 5
    for bad in [(0.0, 0.95), (1.0, 0.95), (0.5, 1.0), (0.5, 0.0)]:
        with pytest.raises(ValueError):
            stats.min_n_for(*bad)


def test_order_stat_ranks_cover_and_match_scipy_where_equal_tailed():
    for conf in (0.9, 0.95):
        for q in (0.5, 0.9, 0.99):
            for n in range(2, 120):
                cdf = st.binom.cdf(np.arange(n + 1), n, q)
                r = stats.order_stat_ranks(n, q, conf)
                if r is None:
                    assert n < stats.min_n_for(q, conf)
                    continue
                lo, hi = r
                assert 1 <= lo < hi <= n
                assert cdf[hi - 1] - cdf[lo - 1] >= conf - 1e-12  # P(l ≤ B < u) ≥ confidence
                ci = st.quantile_test(np.arange(1.0, n + 1), p=q).confidence_interval(conf)
                if np.isfinite(ci.low) and np.isfinite(ci.high):
                    assert (ci.low, ci.high) == (lo, hi)


def test_median_ranks_are_symmetric_and_match_tables():
    assert stats.order_stat_ranks(10, 0.5) == (2, 9)
    assert stats.order_stat_ranks(20, 0.5) == (6, 15)
    assert stats.order_stat_ranks(50, 0.5) == (18, 33)
    assert all(sum(stats.order_stat_ranks(n, 0.5)) == n + 1 for n in range(6, 200))


# ------------------------------------------------------------------------------------- estimate

def test_median_ci_brackets_the_value_and_carries_n():
    x = np.random.default_rng(0).lognormal(0, 0.5, 50)
    e = stats.estimate(x, "median")
    assert e.n == 50 and e.lo <= e.value <= e.hi and e.value == pytest.approx(np.median(x))
    assert e.method == "order statistics (binomial, exact)" and e.need_n is None
    xs = np.sort(x)
    assert (e.lo, e.hi) == (xs[17], xs[32])  # ranks 18 and 33
    assert stats.estimate(x, "p50").as_dict() | {"stat": "median"} == e.as_dict()
    assert stats.estimate(x, "p99").value > e.value


def test_median_ci_coverage_over_seeds():
    # lognormal(0, 0.5) has true median 1; exact coverage ≥ 95%, allow sampling noise over 200 seeds
    hits = 0
    for seed in range(200):
        e = stats.estimate(np.random.default_rng(seed).lognormal(0, 0.5, 50), "median")
        hits += e.lo <= 1.0 <= e.hi
    assert hits >= 180


def test_p90_ci_coverage_over_seeds():
    true = st.expon.ppf(0.9)
    hits = 0
    for seed in range(200):
        e = stats.estimate(np.random.default_rng(seed).exponential(1.0, 40), "p90")
        assert e.lo <= e.value <= e.hi
        hits += e.lo <= true <= e.hi
    assert hits >= 180


def test_p99_from_12_samples_has_no_ci_and_says_why():
    x = np.random.default_rng(3).lognormal(0, 0.5, 12)
    e = stats.estimate(x, "p99")
    assert e.value == pytest.approx(np.percentile(x, 99))
    assert math.isnan(e.lo) and math.isnan(e.hi) and e.need_n == stats.min_n_for(0.99, 0.95)
    text = SECONDS.estimate(e)
    assert "n=12" in text and "no 95% CI" in text and f"below n={e.need_n}" in text and "p99" in text
    assert "[" not in text


def test_p99_ci_can_exceed_nothing_but_sample_yet_reaches_max_at_min_n():
    x = np.random.default_rng(4).lognormal(0, 1, 299)
    e = stats.estimate(x, "p99")
    assert e.hi == x.max() and e.lo < e.value  # the upper bound is the sample max: all it can honestly say


def test_ci_shrinks_with_n():
    rng = np.random.default_rng(1)
    small, big = stats.estimate(rng.normal(1, 0.2, 10)), stats.estimate(rng.normal(1, 0.2, 400))
    assert (big.hi - big.lo) < (small.hi - small.lo)


def test_mean_uses_t_interval():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    e = stats.estimate(x, "mean")
    half = st.t.ppf(0.975, 3) * np.std(x, ddof=1) / 2
    assert e.value == 2.5 and e.lo == pytest.approx(2.5 - half) and e.hi == pytest.approx(2.5 + half)
    assert "t-interval" in e.method
    one = stats.estimate([3.0], "mean")
    assert math.isnan(one.lo) and one.need_n == 2


def test_degenerate_samples():
    empty = stats.estimate([])
    assert math.isnan(empty.value) and empty.n == 0 and "n/a" in SECONDS.estimate(empty)
    one = stats.estimate([2.0])
    assert one.value == 2.0 and one.n == 1 and math.isnan(one.lo) and one.need_n == 6
    assert stats.estimate([None, float("nan"), 1.0, 3.0]).n == 2
    assert "n=1" in one.annotation() and "below n=6" in one.annotation()


def test_identical_values_are_not_shown_as_certainty():
    e = stats.estimate([0.412] * 8)
    assert e.lo == e.hi == 0.412 and e.note == "all 8 values identical"
    assert SECONDS.estimate(e) == "412 ms (all 8 values identical; n=8)"
    few = stats.estimate([412.0] * 5)  # identical, but 5 < 6 samples: still no interval, and it says both
    assert math.isnan(few.lo) and few.annotation() == "all 5 values identical; n=5; no 95% CI of median below n=6"
    m = stats.estimate([2.0] * 3, "mean")
    assert m.lo == m.hi == 2.0 and m.note == "all 3 values identical"


def test_unknown_stat_and_bad_confidence():
    with pytest.raises(ValueError, match="allowed"):
        stats.estimate([1, 2, 3], "mode")
    with pytest.raises(ValueError):
        stats.estimate([1, 2, 3], "p100")
    with pytest.raises(ValueError):
        stats.estimate([1, 2, 3], confidence=95)


def test_annotation_and_json_round_trip():
    assert stats.Estimate("p99", 3380.4, math.nan, math.nan, 4, need_n=299).annotation() == \
        "n=4; no 95% CI of p99 below n=299"
    e = stats.Estimate("p99", math.inf, 2.0, math.inf, 9, method="m", note="x", n_a=9, n_b=10)
    assert stats.Estimate.from_dict(json.loads(dumps(e.as_dict()))) == e


# ----------------------------------------------------------------------------------------- ratio

def test_ratio_recovers_known_scale_factor():
    rng = np.random.default_rng(2)
    cold, warm = 3.0 * rng.lognormal(0, 0.1, 20), rng.lognormal(0, 0.1, 20)
    r = stats.ratio(cold, warm)
    assert r.value == pytest.approx(3.0, rel=0.08) and r.lo < 3.0 < r.hi and r.lo < r.value < r.hi
    assert r.method == "Hodges–Lehmann ratio, Moses distribution-free CI (log scale)"
    assert (r.n, r.n_a, r.n_b) == (20, 20, 20) and "n=20 vs 20" in r.annotation()


def test_ratio_matches_hodges_lehmann_definition_and_moses_ranks():
    a, b = np.array([2.0, 3.0, 5.0, 7.0, 11.0]), np.array([1.0, 1.5, 2.5, 4.0])
    d = np.sort((np.log(a)[:, None] - np.log(b)[None, :]).ravel())
    r = stats.ratio(a, b)
    assert r.value == pytest.approx(np.exp(np.median(d)))
    # m=5, n=4: P(U ≤ 0) = 1/126, P(U ≤ 1) = 2/126 ≤ 0.025 < P(U ≤ 2) = 4/126, so k = 2
    assert r.lo == pytest.approx(np.exp(d[1])) and r.hi == pytest.approx(np.exp(d[-2]))


def test_mwu_null_distribution_is_exact():
    cdf = stats._mwu_cdf(4, 6)
    counts = np.zeros(25)
    from itertools import combinations
    for ranks in combinations(range(1, 11), 4):
        counts[sum(ranks) - 10] += 1
    assert np.allclose(cdf, np.cumsum(counts) / counts.sum(), rtol=1e-12, atol=0)


def test_ratio_coverage_over_seeds():
    hits = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        r = stats.ratio(3.0 * rng.lognormal(0, 0.4, 10), rng.lognormal(0, 0.4, 12))
        hits += r.lo <= 3.0 <= r.hi
    assert hits >= 88


def test_ratio_too_small_and_min_n():
    assert stats.min_n_ratio(0.95) == 4  # 1/C(8,4) = 1/70 ≤ 0.025 < 1/C(6,3) = 1/20
    assert stats.min_n_ratio(0.99) == 5
    r = stats.ratio([3.0, 3.3, 2.9], [1.0, 1.1, 0.9])
    assert math.isnan(r.lo) and r.need_n == 4 and "below n=4 per sample" in r.annotation()
    ok = stats.ratio([3.0, 3.3, 2.9, 3.1], [1.0, 1.1, 0.9, 1.05])
    assert ok.lo == pytest.approx(2.9 / 1.1) and ok.hi == pytest.approx(3.3 / 0.9)  # k=1: extreme differences


def test_ratio_drops_nonpositive_and_validates_stat():
    r = stats.ratio([0.0, -1.0, 3.0, 3.1, 2.9, 3.2], [1.0, 1.1, 0.9, 1.0])
    assert r.n_a == 4 and r.n_b == 4 and r.note == "dropped 2 non-positive values"
    assert "dropped 2 non-positive values" in r.annotation()
    with pytest.raises(ValueError, match="median"):
        stats.ratio([1, 2], [1, 2], "mean")
    assert math.isnan(stats.ratio([], [1.0]).value)


def test_ratio_normal_approximation_for_large_samples():
    rng = np.random.default_rng(5)
    r = stats.ratio(2.0 * rng.lognormal(0, 0.3, 300), rng.lognormal(0, 0.3, 300))
    assert r.lo < 2.0 < r.hi and r.hi / r.lo < 1.2


# ------------------------------------------------------------------------------------ throughput

def _poisson_times(rate: float, seconds: float, rng) -> np.ndarray:
    gaps = rng.exponential(1 / rate, int(rate * seconds * 1.5))
    t = np.cumsum(gaps)
    return (t[t < seconds] * 1e9).astype(np.int64)


def test_throughput_ci_covers_poisson_rate():
    hits = 0
    for seed in range(100):
        t = _poisson_times(50.0, 60.0, np.random.default_rng(seed))
        e = stats.throughput_ci(t, 0, 60_000_000_000)
        assert e.value == pytest.approx(len(t) / 60) and e.n == 5
        hits += e.lo <= 50.0 <= e.hi
    assert hits >= 85
    assert e.method == "batch means (k=5 windows)"


def test_throughput_ci_constant_stream_is_narrow_and_accepts_per_request_lists():
    per_request = [list(range(r * 1_000_000, 10_000_000_000, 4_000_000)) for r in range(4)]  # 1000 tok/s
    e = stats.throughput_ci(per_request, 0, 10_000_000_000)
    assert e.value == pytest.approx(1000, rel=0.01) and (e.hi - e.lo) / e.value < 0.01


def test_throughput_ci_needs_three_windows_with_tokens():
    t = np.linspace(0, 1e9, 50)  # all tokens in the first second of ten
    e = stats.throughput_ci(t, 0, 10_000_000_000)
    assert e.value == pytest.approx(5.0) and math.isnan(e.lo) and "only 1 of 5 windows" in e.note
    two = stats.throughput_ci(np.linspace(0, 1e10, 100), 0, 10_000_000_000, batches=2)
    assert math.isnan(two.lo) and two.need_n == 3


def test_replicate_ci():
    e = stats.replicate_ci([100.0, 104.0, 98.0, 102.0])
    half = st.t.ppf(0.975, 3) * np.std([100, 104, 98, 102], ddof=1) / 2
    assert e.value == 101.0 and e.hi - e.value == pytest.approx(half)
    assert e.method == "t-interval across 4 repeated series"


# --------------------------------------------------------------------------------------- tables

def test_summarize_groups():
    df = pd.DataFrame({"v": ["a"] * 5 + ["b"] * 7, "x": [1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 60, 70]})
    s = stats.summarize(df, "v", "x")
    assert list(s["v"]) == ["a", "b"] and list(s["n"]) == [5, 7] and list(s["median"]) == [3, 40]
    assert s["median_need_n"].tolist()[0] == 6 and math.isnan(s["median_lo"][0])
    assert s["median_lo"][1] == 10 and s["median_hi"][1] == 70  # n=7: ranks (1, 7)
    assert list(s["p99_need_n"]) == [299, 299]
    assert stats.pooled(pd.Series([[1, 2], [3], None])) == [1, 2, 3]


def test_default_confidence_is_95_percent_everywhere():
    e = stats.estimate([1.0, 2, 3, 4, 5, 6, 7, 8])
    r = stats.ratio([2.0, 2.1, 1.9, 2.2], [1.0, 1.1, 0.9, 1.05])
    assert e.confidence == r.confidence == stats.CONFIDENCE == 0.95
    # and the interval is the 95% one: ranks 1 and 8 of 8 (ranks 2 and 7 cover only 93%)
    assert (e.lo, e.hi) == (1.0, 8.0)
