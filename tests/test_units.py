"""The one unit type: a value's text, its interval, an estimate with its note, a chart's scale and axis label, and
the metric catalogue declaring each metric's unit, so a figure reads the same in a table, a comparison and a chart."""

import math

import pandas as pd
import pytest

from perfkit.analysis import stats
from perfkit.analysis.figures import Figure
from perfkit.analysis.metrics import CATALOGUE
from perfkit.core import fmt, units
from perfkit.core.units import (BYTES, JOULES, PERCENT, RATIO, REQUESTS_PER_S, SECONDS, SHARE, TOKENS_PER_S,
                                WATTS, Unit)
from perfkit.report import charts

NAN = float("nan")
ALL = (SECONDS, TOKENS_PER_S, REQUESTS_PER_S, BYTES, SHARE, PERCENT, JOULES, WATTS, RATIO)


@pytest.mark.parametrize("unit, value, text", [
    (SECONDS, 0.00085, "850 µs"), (SECONDS, 0.412, "412 ms"), (SECONDS, 1.549, "1.55 s"), (SECONDS, 189.0, "3.15 min"),
    (SECONDS, 0.9996, "1.00 s"),  # the scale is chosen after rounding, never "1000 ms"
    (SECONDS, math.inf, "> limit"),  # a censored value: failed or timed out
    (TOKENS_PER_S, 132.4, "132 tok/s"), (TOKENS_PER_S, 1548, "1550 tok/s"), (TOKENS_PER_S, 0.5123, "0.512 tok/s"),
    (REQUESTS_PER_S, 2.5e6, "2500000 req/s"),  # plain digits, never "2.5e+06"
    (BYTES, 495_976_448, "473 MiB"), (BYTES, 48 * 2**30, "49200 MiB"),  # always MiB: rows compare at a glance
    (SHARE, 0.45, "45%"), (SHARE, 0.004, "0.4%"), (SHARE, 0.0453, "4.5%"), (SHARE, 1.234, "123%"),
    (SHARE, 0.375, "38%"),  # 37.5 %, as the report has always read it
    (PERCENT, 45.0, "45%"), (PERCENT, 180.0, "180%"),
    (JOULES, 0.5123, "0.512 J"), (WATTS, 61.3, "61.3 W"), (RATIO, 3.021, "3.02×"),
])
def test_a_value_reads_with_three_significant_digits_and_its_symbol(unit, value, text):
    assert unit.text(value) == text


@pytest.mark.parametrize("unit", ALL)
def test_a_missing_value_is_na_in_every_unit(unit):
    assert unit.text(None) == unit.text(NAN) == unit.ci(None, 1, 2) == "n/a"
    assert unit.plot(None) is None and unit.plot(NAN) is None and unit.plot(math.inf) is None


@pytest.mark.parametrize("unit, args, text", [
    (SECONDS, (0.412, 0.398, 0.431), "412 ms [398, 431]"),
    (SECONDS, (0.95, 0.8, 1.2), "950 ms [800, 1200]"),  # bounds in the value's scale, even past 1 s
    (SECONDS, (0.412, NAN, NAN), "412 ms"), (SECONDS, (0.412, 0.412, 0.412), "412 ms"),  # zero width: no certainty
    (SECONDS, (0.412, 0.398, math.inf), "412 ms [398, > limit]"),
    (SECONDS, (math.inf, 1.2, math.inf), "> limit [1.20 s, > limit]"),
    (TOKENS_PER_S, (132.4, 120.2, 141.0), "132 tok/s [120, 141]"),
    (BYTES, (300 * 2**20, 290 * 2**20, 310 * 2**20), "300 MiB [290, 310]"),
    (SHARE, (0.45, 0.40, 0.50), "45% [40%, 50%]"),  # a percentage's bounds say "%" too
    (RATIO, (3.021, 2.91, 3.15), "3.02× [2.91, 3.15]"),
])
def test_an_interval_reads_in_the_values_scale(unit, args, text):
    assert unit.ci(*args) == text


def test_the_scale_a_value_reads_in():
    assert SECONDS.scale(0.412) == (1e-3, "ms") and SECONDS.scale(0.9996) == (1.0, "s")
    assert SECONDS.scale(189.0) == (60.0, "min")
    assert BYTES.scale(5.0) == (2**20, "MiB") and TOKENS_PER_S.scale(1e9) == (1.0, "tok/s")


def test_estimates_read_with_their_note_and_n():
    assert SECONDS.estimate(stats.Estimate("median", 0.412, 0.398, 0.431, 5)) == "412 ms [398, 431] (n=5)"
    assert TOKENS_PER_S.estimate(stats.Estimate("throughput", 132.4, 120.2, 141.0, 5)) == "132 tok/s [120, 141] (n=5)"
    assert RATIO.estimate(stats.Estimate("ratio", 3.021, 2.91, 3.15, 8, n_a=8, n_b=9)) == "3.02× [2.91, 3.15] (n=8 vs 9)"
    assert SHARE.estimate(stats.Estimate("mean", 0.45, 0.40, 0.50, 20)) == "45% [40%, 50%] (n=20)"
    assert SECONDS.estimate(stats.estimate([0.412] * 6)) == "412 ms (all 6 values identical; n=6)"
    need = stats.min_n_for(0.99, 0.95)
    assert SECONDS.estimate(stats.estimate([0.40, 0.41, 0.42, 0.43], "p99")) == \
        f"430 ms (n=4; no 95% CI of p99 below n={need})"
    assert SECONDS.estimate(stats.estimate([])).startswith("n/a (n=0")


@pytest.mark.parametrize("unit", [TOKENS_PER_S, REQUESTS_PER_S, BYTES, SHARE, PERCENT, JOULES, WATTS, RATIO])
@pytest.mark.parametrize("value", [0.0123, 1.5, 473.2, 2.5e6])
def test_a_chart_plots_the_number_its_text_and_axis_say(unit, value):
    """The hover text, the plotted number and the axis symbol agree: '473 MiB' is plotted at 473 on a MiB axis."""
    assert unit.text(value).endswith(unit.symbol) and unit.axis_label("x") == f"x ({unit.symbol})"
    digits = fmt.percent_digits if unit.symbol == "%" else fmt.number
    assert unit.text(value).removesuffix(unit.symbol).strip() == digits(unit.plot(value))


def test_axis_labels():
    assert SECONDS.axis_label("median TTFT") == "median TTFT (s)" and SECONDS.axis_label() == "seconds"
    assert BYTES.axis_label("peak RSS") == "peak RSS (MiB)" and TOKENS_PER_S.axis_label() == "tokens/s"
    assert SHARE.axis_label("share of tokens") == "share of tokens (%)"
    assert SECONDS.plot(0.412) == 0.412 and BYTES.plot(3 * 2**20) == 3.0 and SHARE.plot(0.45) == pytest.approx(45)
    assert PERCENT.plot(45.0) == 45.0


def test_bars_scale_label_and_hover_through_the_unit():
    df = pd.DataFrame({"x": ["a", "b"], "rss": [300 * 2**20, 600 * 2**20], "lo": [290 * 2**20, 600 * 2**20],
                       "hi": [310 * 2**20, 600 * 2**20], "n": [8, 1]})
    c = charts.bars(df, "x", "rss", "lo", "hi", n="n", title="t", alt="a", unit=BYTES, what="peak RSS")
    (s,) = c.series
    assert s.y == [300.0, 600.0] and s.lo == [290.0, 600.0] and c.ylabel == "peak RSS (MiB)"
    assert s.text == ["300 MiB [290, 310] n=8", "600 MiB (no CI at this n) n=1"]
    assert c.plotly()["layout"]["yaxis"]["title"]["text"] == "peak RSS (MiB)"
    assert charts.bars(df.assign(s=[0.4, 0.5]), "x", "s", title="t", alt="a").ylabel == "seconds"


def test_tables_format_a_column_through_its_unit():
    from perfkit.report.page import format_table

    df = pd.DataFrame({"k": ["a"], "ttft_s": [0.412], "lo": [0.398], "hi": [0.431], "rss": [495_976_448.0],
                       "share": [0.45], "n": [8]})
    t = format_table(df, {"k": "setting", "ttft_s": "TTFT", "rss": "peak RSS", "share": "cached", "n": "n"},
                     ci={"ttft_s": ("lo", "hi")}, units={"ttft_s": SECONDS, "rss": BYTES, "share": SHARE})
    assert t.loc["a"].tolist() == ["412 ms [398, 431]", "473 MiB", "45%", "8"]


def test_the_catalogue_declares_each_metrics_unit_and_figures_read_through_it():
    assert all(isinstance(m.unit, Unit) for m in CATALOGUE.values())
    assert (CATALOGUE["ttft"].unit, CATALOGUE["memory"].unit, CATALOGUE["failed"].unit, CATALOGUE["goodput"].unit,
            CATALOGUE["throughput"].unit, CATALOGUE["efficiency"].unit) == \
        (SECONDS, BYTES, SHARE, REQUESTS_PER_S, TOKENS_PER_S, RATIO)
    f = Figure("s/memory", "memory", {}, stats.Estimate("value", 495_976_448.0, NAN, NAN, 1, note="one reading"))
    assert f.unit is BYTES and f.short() == "473 MiB (n=1)" and f.text() == "473 MiB (one reading; n=1 readings)"
    assert f.link() == f"[473 MiB](#{f.anchor})"


def test_a_unit_is_found_by_the_name_a_file_gives():
    assert [units.named(u.name) for u in ALL] == list(ALL) and len({u.name for u in ALL}) == len(ALL)
    with pytest.raises(ValueError, match="known: seconds"):
        units.named("furlongs")
    assert fmt.NA == "n/a"
