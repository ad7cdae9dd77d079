import math

import numpy as np
import pandas as pd
import pytest

from perfkit import stats


def test_median_ci_brackets_the_value_and_carries_n():
    x = np.random.default_rng(0).lognormal(0, 0.5, 50)
    e = stats.estimate(x, "median")
    assert e.n == 50 and e.lo <= e.value <= e.hi and e.value == pytest.approx(np.median(x))
    assert e.hi - e.lo < 0.5
    p99 = stats.estimate(x, "p99")
    assert p99.value > e.value


def test_ci_shrinks_with_n():
    rng = np.random.default_rng(1)
    small, big = stats.estimate(rng.normal(1, 0.2, 10)), stats.estimate(rng.normal(1, 0.2, 400))
    assert (big.hi - big.lo) < (small.hi - small.lo)


def test_degenerate_samples():
    assert math.isnan(stats.estimate([]).value)
    one = stats.estimate([2.0])
    assert one.value == 2.0 and one.n == 1 and math.isnan(one.lo)
    assert stats.estimate([None, float("nan"), 1.0, 3.0]).n == 2
    assert "n=1" in one.fmt(" s")


def test_ratio_with_ci():
    rng = np.random.default_rng(2)
    cold, warm = rng.normal(3.0, 0.1, 20), rng.normal(1.0, 0.05, 20)
    r = stats.ratio(cold, warm)
    assert r.value == pytest.approx(np.median(cold) / np.median(warm))
    assert r.lo < r.value < r.hi and 2.5 < r.lo and r.hi < 3.5


def test_summarize_groups():
    df = pd.DataFrame({"v": ["a"] * 5 + ["b"] * 5, "x": [1, 2, 3, 4, 5, 10, 20, 30, 40, 50]})
    s = stats.summarize(df, "v", "x")
    assert list(s["v"]) == ["a", "b"] and list(s["n"]) == [5, 5] and list(s["median"]) == [3, 30]
    assert stats.pooled(pd.Series([[1, 2], [3], None])) == [1, 2, 3]
