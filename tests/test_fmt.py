import math

import pytest

from perfkit.core import fmt

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


def test_missing_counts_and_sizes():
    assert fmt.count(None) == fmt.size(NAN) == fmt.pct(None) == "n/a"
    assert fmt.missing(None) and fmt.missing(NAN) and fmt.missing("fast") and not fmt.missing(math.inf)


def test_duration_scale_is_chosen_after_rounding():
    assert fmt.duration_scale(0.412) == (1e-3, "ms") and fmt.duration_scale(0.9996) == (1.0, "s")
    assert fmt.duration_scale(0.0) == (1.0, "s") and fmt.duration_scale(1e-12) == (1e-9, "ns")


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


def test_finite_is_a_number_or_none():
    from perfkit.core import fmt

    assert fmt.finite(3) == 3.0 and fmt.finite("2.5") == 2.5
    assert fmt.finite(float("nan")) is None and fmt.finite(float("inf")) is None and fmt.finite(None) is None
    assert fmt.finite("fast") is None
