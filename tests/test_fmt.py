import math

import pytest

from perfkit.core import fmt
from perfkit.analysis import stats

NAN = float("nan")


@pytest.mark.parametrize("seconds, text", [
    (0.00085, "850 µs"), (0.0125, "12.5 ms"), (0.412, "412 ms"), (1.549, "1.55 s"), (189.0, "3.15 min"),
    (5580.0, "1.55 h"), (0.9996, "1.00 s"), (0.0009996, "1.00 ms"), (3599.0, "1.00 h"), (0.0, "0 s"),
    (2.5e-8, "25.0 ns"), (-0.5, "-500 ms"), (3380.0, "56.3 min"), (1e7, "2780 h"),
])
def test_duration(seconds, text):
    assert fmt.duration(seconds) == text


def test_duration_missing_and_no_scientific_notation():
    assert fmt.duration(None) == fmt.duration(NAN) == "n/a"
    for x in [1e-12, 3.38e3, 1e9, 123456.0]:
        assert "e+" not in fmt.duration(x) and "e-" not in fmt.duration(x)


def test_duration_ci_uses_value_unit_for_bounds():
    assert fmt.duration_ci(0.412, 0.398, 0.431) == "412 ms [398, 431]"
    assert fmt.duration_ci(0.95, 0.8, 1.2) == "950 ms [800, 1200]"
    assert fmt.duration_ci(0.412, NAN, NAN) == "412 ms"
    assert fmt.duration_ci(0.412, 0.412, 0.412) == "412 ms"  # zero width is not shown as certainty
    assert fmt.duration_ci(None, 1, 2) == "n/a"


@pytest.mark.parametrize("n, text", [
    (134_515_008, "135M"), (32_763_876_352, "32.8B"), (7_241_732_096, "7.24B"), (999, "999"), (12, "12"),
    (1_500, "1.50k"), (999_600, "1.00M"), (2.5e12, "2.50T"), (0, "0"),
])
def test_count(n, text):
    assert fmt.count(n) == text


@pytest.mark.parametrize("nbytes, text", [
    (98_000_000, "98.0 MB"), (47_400_000_000, "47.4 GB"), (253_000_000, "253 MB"), (512, "512 B"),
    (999_600_000, "1.00 GB"), (1.2e15, "1.20 PB"),
])
def test_size(nbytes, text):
    assert fmt.size(nbytes) == text


def test_mib_rate_ratio():
    assert fmt.mib(495_976_448) == "473 MiB"
    assert fmt.mib(48 * 2**30) == "49200 MiB"  # fixed unit, plain digits
    assert fmt.rate(132.4) == "132 tok/s" and fmt.rate(1548) == "1550 tok/s"
    assert fmt.rate(0.5123) == "0.512 tok/s" and fmt.rate(2.5e6, "req/s") == "2500000 req/s"
    assert fmt.ratio(3.021) == "3.02×"
    assert fmt.count(None) == fmt.size(NAN) == fmt.mib(None) == fmt.rate(NAN) == fmt.ratio(None) == "n/a"


@pytest.mark.parametrize("x, text", [
    (0.45, "45%"), (0.004, "0.4%"), (0.0453, "4.5%"), (1.0, "100%"), (0.0, "0%"), (1.234, "123%"),
    (0.000412, "0.041%"), (0.02, "2%"),
])
def test_pct(x, text):
    assert fmt.pct(x) == text


def test_pct_of_percent_values_and_missing():
    assert fmt.pct(45.0, fraction=False) == "45%" and fmt.pct(None) == "n/a"


def test_number_significant_digits():
    assert fmt.number(3.38e3) == "3380" and fmt.number(0.000512) == "0.000512" and fmt.number(12) == "12.0"
    assert fmt.number(9.996) == "10.0" and fmt.number(math.inf) == "∞" and fmt.number(NAN) == "n/a"


def test_estimate_kinds():
    e = stats.Estimate("median", 0.412, 0.398, 0.431, 5)
    assert fmt.estimate(e) == "412 ms [398, 431] (n=5)"
    r = stats.Estimate("throughput", 132.4, 120.2, 141.0, 5)
    assert fmt.estimate(r, "rate") == "132 tok/s [120, 141] (n=5)"
    x = stats.Estimate("ratio", 3.021, 2.91, 3.15, 8, n_a=8, n_b=9)
    assert fmt.estimate(x, "ratio") == "3.02× [2.91, 3.15] (n=8 vs 9)"
    p = stats.Estimate("mean", 0.45, 0.40, 0.50, 20)
    assert fmt.estimate(p, "pct") == "45% [40%, 50%] (n=20)"
    assert fmt.estimate(stats.Estimate("median", 412.0, 398.0, 431.0, 5), "plain", "ms") == \
        "412 ms [398, 431] (n=5)"
    with pytest.raises(ValueError, match="allowed"):
        fmt.estimate(e, "bogus")


def test_estimate_notes_from_real_estimates():
    ident = stats.estimate([0.412] * 6)
    assert fmt.estimate(ident) == "412 ms (all 6 values identical; n=6)"
    small = stats.estimate([0.40, 0.41, 0.42, 0.43], "p99")
    need = stats.min_n_for(0.99, 0.95)
    assert fmt.estimate(small) == f"430 ms (n=4; no 95% CI of p99 below n={need})"
    assert fmt.estimate(stats.estimate([])).startswith("n/a (n=0")


def test_finite_is_a_number_or_none():
    from perfkit.core import fmt

    assert fmt.finite(3) == 3.0 and fmt.finite("2.5") == 2.5
    assert fmt.finite(float("nan")) is None and fmt.finite(float("inf")) is None and fmt.finite(None) is None
    assert fmt.finite("fast") is None
