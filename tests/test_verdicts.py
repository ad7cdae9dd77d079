"""perfkit.analysis.verdicts and how compare uses it: runs as the unit, the false-discovery rate over a
comparison's rows, the minimum practical effect of single runs, rows that are not comparable, noisy runs.
Statistical properties are checked by simulation with fixed seeds (deterministic, no timing)."""

import json
import math

import numpy as np
import pytest
from scipy import stats as st

from perfkit import compare as cmp
from perfkit.analysis import verdicts
from perfkit.analysis.figures import FILE_NAME

from test_compare import make_run, row


def _lognormal(rng, median: float, sd: float, n: int) -> list[float]:
    return list(median * np.exp(rng.normal(0, sd, n)))


# ---------------------------------------------------------------------------------------------- runs as the unit

def test_three_runs_a_side_detect_a_real_slowdown_with_the_pooled_test():
    before, after = [1.00, 1.06, 0.95], [1.52, 1.61, 1.43]
    r = verdicts.compare_replicates(before, after, "lower")
    assert r.verdict == verdicts.WORSE and r.mode == "runs" and r.ratio.lo > 1
    assert "pooled Student" in r.ratio.method and "3 vs 3 runs" in r.ratio.method
    la, lb = np.log(after), np.log(before)
    assert r.p_value == pytest.approx(st.ttest_ind(la, lb, equal_var=True).pvalue)  # Student's test, df = 4
    assert 1.45 < r.ratio.value < 1.6


def test_unequal_runs_a_side_use_welch():
    r = verdicts.compare_replicates([1.0, 1.06, 0.95, 1.02], [1.52, 1.61, 1.43], "lower")
    assert "Welch" in r.ratio.method
    assert r.p_value == pytest.approx(st.ttest_ind(np.log([1.52, 1.61, 1.43]), np.log([1.0, 1.06, 0.95, 1.02]),
                                                   equal_var=False).pvalue)


@pytest.mark.parametrize("sd_ratio", [1.0, 3.0])
def test_runs_of_the_same_thing_are_called_changed_at_about_the_nominal_rate(sd_ratio):
    """A/A with 3 runs a side, 4000 simulated comparisons: at most ~5 % called (pooled t with equal n stays
    near its level even when one side's runs spread 3× more)."""
    rng = np.random.default_rng(20261201)
    called = 0
    trials = 4000
    for _ in range(trials):
        r = verdicts.compare_replicates(_lognormal(rng, 1.0, 0.05, 3), _lognormal(rng, 1.0, 0.05 * sd_ratio, 3),
                                        "lower")
        called += r.called
    assert called / trials <= (0.06 if sd_ratio == 1 else 0.09), called / trials


def test_a_real_change_between_noisy_runs_is_found_by_runs_but_not_at_two():
    rng = np.random.default_rng(7)
    power = sum(verdicts.compare_replicates(_lognormal(rng, 1.0, 0.08, 3), _lognormal(rng, 1.6, 0.08, 3),
                                            "lower").verdict == verdicts.WORSE for _ in range(500)) / 500
    assert power > 0.95, power
    two = verdicts.compare_replicates([1.0, 1.1], [1.6, 1.7], "lower")
    assert "t-interval" in two.ratio.method and two.n_before == 2  # two runs: still a test, wider CI
    one = verdicts.compare_replicates([1.0], [1.6], "lower")
    assert one.verdict == verdicts.NO_CHANGE and "fewer than 2 runs" in one.reason


# ---------------------------------------------------------------------------------------------- multiplicity

def _row(p: float, lo: float = 1.2, hi: float = 1.5) -> verdicts.Row:
    from perfkit.analysis import stats
    ratio = stats.Estimate("ratio", (lo + hi) / 2, lo, hi, 8, n_a=8, n_b=8)
    return verdicts.Row("k", "l", "duration", "lower", "", "", ratio, verdicts.WORSE, "the CI excludes 1", 8, 8, p)


def test_fdr_q_values_are_benjamini_hochberg():
    ps = list(np.random.default_rng(3).uniform(0, 0.2, 25)) + [1e-4, 0.003]
    rows = [_row(p) for p in ps]
    verdicts.fdr_adjust(rows)
    assert [r.q_value for r in rows] == pytest.approx(list(st.false_discovery_control(ps, method="bh")))


def test_a_lone_borderline_row_among_many_unchanged_is_not_called():
    rows = [_row(0.02)] + [_row(p, 0.9, 1.1) for p in np.linspace(0.2, 0.95, 30)]
    for r in rows[1:]:
        r.verdict = verdicts.NO_CHANGE
    verdicts.fdr_adjust(rows)
    assert rows[0].verdict == verdicts.NO_CHANGE and rows[0].q_value > verdicts.FDR
    assert "q" in rows[0].reason or "false-discovery" in rows[0].reason


def test_many_real_changes_keep_their_verdicts():
    rows = [_row(p) for p in (1e-4, 5e-4, 1e-3, 4e-3, 0.01)]
    verdicts.fdr_adjust(rows)
    assert all(r.verdict == verdicts.WORSE for r in rows)


# ---------------------------------------------------------------------------------------------- minimum effect

def test_a_small_change_within_the_single_run_spread_is_not_called():
    rng = np.random.default_rng(11)
    before = _lognormal(rng, 1.00, 0.01, 40)
    after = _lognormal(rng, 1.05, 0.01, 40)  # +5 %: real within the run, inside the A/A spread between runs
    strict = verdicts.compare_samples(before, after, "lower", min_effect=0.10)
    assert strict.verdict == verdicts.NO_CHANGE and strict.ratio.lo > 1 and "±10%" in strict.reason
    assert verdicts.compare_samples(before, after, "lower", min_effect=0.0).verdict == verdicts.WORSE
    big = verdicts.compare_samples(before, _lognormal(rng, 1.3, 0.01, 40), "lower", min_effect=0.10)
    assert big.verdict == verdicts.WORSE and "±10%" in big.reason


def test_compare_applies_the_minimum_effect_only_to_single_runs_and_says_so(tmp_path):
    a = make_run(tmp_path, "a", warm_s=0.200, seed=1)
    b = make_run(tmp_path, "b", warm_s=0.212, seed=2)  # +6 %
    c = cmp.compare(a, b)
    assert c.mode == "requests" and c.min_effect == verdicts.MIN_EFFECT
    assert row(c, "cold_start/e2e/warm").verdict == verdicts.NO_CHANGE
    assert f"±{verdicts.MIN_EFFECT:.0%}" in c.how()


def _replicate(run, n: int = 3, spread: float = 0.03, seed: int = 0, like=None):
    """Give every figure of a synthetic run ``n`` replicate values, as `--repeat n` would: around its own value,
    or around the same figure's value in run ``like`` (runs of the same thing)."""
    rng = np.random.default_rng(seed)
    f = run / "cold_start" / FILE_NAME
    data = json.loads(f.read_text())
    centers = {d["key"]: (d.get("estimate") or {}).get("value")
               for d in json.loads(((like or run) / "cold_start" / FILE_NAME).read_text())["figures"]}
    for d in data["figures"]:
        v = centers.get(d["key"])
        if isinstance(v, (int, float)) and v and math.isfinite(v) and (d.get("samples") or []):
            d["replicates"] = _lognormal(rng, v, spread, n)
    f.write_text(json.dumps(data))
    return run


def test_replicated_runs_are_compared_by_runs(tmp_path):
    a = _replicate(make_run(tmp_path, "a", warm_s=0.2, seed=1), seed=1)
    b = _replicate(make_run(tmp_path, "b", warm_s=0.3, seed=2), seed=2)
    c = cmp.compare(a, b)
    assert c.mode == "runs" and "runs are the unit" in c.how()
    r = row(c, "cold_start/e2e/warm")
    assert r.mode == "runs" and r.verdict == verdicts.WORSE and r.n_before == r.n_after == 3
    aa = cmp.compare(a, _replicate(make_run(tmp_path, "a2", warm_s=0.2, seed=3), seed=3, like=a))
    assert aa.mode == "runs" and aa.counts()[verdicts.IMPROVED] + aa.counts()[verdicts.WORSE] == 0


# ---------------------------------------------------------------------------------------------- comparable or not

def _with_workload(run, **workload):
    f = run / "cold_start" / FILE_NAME
    data = json.loads(f.read_text())
    for d in data["figures"]:
        d["workload"] = {**(d.get("workload") or {}), **workload}
    f.write_text(json.dumps(data))


def test_rows_whose_workload_differs_are_not_comparable(tmp_path):
    a = make_run(tmp_path, "a", warm_s=0.2, seed=1)
    b = make_run(tmp_path, "b", warm_s=0.4, seed=2)
    _with_workload(b, prompt_words=999)
    c = cmp.compare(a, b)
    r = row(c, "cold_start/e2e/warm")
    assert r.verdict == verdicts.NOT_COMPARABLE and "prompt_words" in r.reason and "999" in r.reason
    assert math.isnan(r.p_value) and c.counts()[verdicts.WORSE] == 0


def test_runs_that_differ_only_in_output_length_are_compared_and_say_so(tmp_path):
    """A different number of output tokens by design: every row is compared; one that depends on it (end to end)
    names the difference as what else could explain it, one that does not (time to first token) says so."""
    a = make_run(tmp_path, "a", warm_s=0.2, seed=1)
    b = make_run(tmp_path, "b", warm_s=0.4, seed=2)
    _with_workload(b, num_predict=999)
    c = cmp.compare(a, b)
    e2e = row(c, "cold_start/e2e/warm")
    assert e2e.verdict == verdicts.WORSE
    assert any("output length differs" in x and "999" in x for x in e2e.confounds), e2e.confounds
    ttft = next(r for r in c.rows if r.key.startswith("cold_start/ttft"))
    assert ttft.verdict != verdicts.NOT_COMPARABLE and "does not enter this figure" in ttft.reason
    assert c.counts()[verdicts.NOT_COMPARABLE] == 0


def test_another_model_file_is_not_comparable(tmp_path):
    a = make_run(tmp_path, "a", warm_s=0.2, seed=1)
    b = make_run(tmp_path, "b", warm_s=0.4, seed=2, digest="0000ffff")
    r = row(cmp.compare(a, b), "cold_start/e2e/warm")
    assert r.verdict == verdicts.NOT_COMPARABLE and "model file" in r.reason


def test_a_noisy_run_is_flagged_at_the_top_and_its_rows_are_not_counted(tmp_path):
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b", noisy=True, warm_s=0.4)
    c = cmp.compare(a, b)
    assert c.noisy_runs and row(c, "cold_start/e2e/warm").verdict == verdicts.WORSE
    assert c.counts()[verdicts.WORSE] == 0
    summary = c.summary()
    assert "Noisy run" in summary and summary.index("Noisy run") < summary.index("How")
    # The count its own report shows, not a share of some figure's requests.
    n = len(cmp.load(b).figures["cold_start"].noisy and [1]) and cmp.load(b).figures["cold_start"].noisy["requests"]
    assert f"cold start: {n} of {n} requests ran while other processes used it" in summary, summary
