"""The trial runner, against the fake Ollama (fast); the engine-backed runs are in test_coldstart / test_notebooks."""

import pytest

from perfkit.kinds.ollama import OllamaBackend
from perfkit.client.backends import Sampling
from perfkit.core.errors import PerfkitError
from perfkit.analysis.series import goodput, request_rate, steady_window
from perfkit.measure.runner import Runner, Trial, plan
from perfkit.core.store import RunStore


def test_plan_flags_warmups_and_interleaves_with_a_recorded_seed():
    t = plan(["a", "b", "c"], 4, prefix="s", warmup=1, seed=7)
    assert [x.warmup for x in t[:3]] == [True] * 3 and not any(x.warmup for x in t[3:])
    rounds = [[x.variant for x in t[3 + 3 * r: 6 + 3 * r]] for r in range(4)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)  # every round has each variant once
    assert len({tuple(r) for r in rounds}) > 1  # shuffled, not all-A-then-all-B
    assert plan(["a", "b", "c"], 4, prefix="s", seed=7)[3].trial_id == t[3].trial_id  # same seed, same order
    assert t[3].tags["order_seed"] == 7
    assert len({x.prompt for x in t}) == len(t)  # every prompt is unique: no prompt-cache hits


def test_bad_cache_state_is_refused():
    with pytest.raises(PerfkitError, match="unknown cache state 'tepid'"):
        Trial("x", "m", "tepid")


def test_run_resumes_without_redoing_completed_trials(fake_ollama, tmp_path):
    b = OllamaBackend(fake_ollama.url)
    trials = plan(["good"], 3, prefix="r", warmup=1, sampling=Sampling(num_predict=3))
    Runner(b, RunStore(tmp_path), progress=False).run(trials[:2])
    sent = len([r for r in fake_ollama.requests if r.get("messages")])
    df = Runner(b, RunStore(tmp_path), progress=False).run(trials)
    assert len(df) == 4 and df["ok"].all()
    assert len([r for r in fake_ollama.requests if r.get("messages")]) - sent == 2  # only the missing two
    assert RunStore(tmp_path).events()["kind"].tolist() == ["resume"]


def test_failures_are_rows_not_crashes(fake_ollama, tmp_path):
    b = OllamaBackend(fake_ollama.url)
    df = Runner(b, RunStore(tmp_path), progress=False).run(
        [Trial("a", "http500"), Trial("b", "malformed"), Trial("c", "good"), Trial("d", "good", "cold_disk")])
    assert df.set_index("trial_id")["ok"].to_dict() == {"a": False, "b": False, "c": True, "d": False}
    assert "cold_disk needs the model's file on the server's host" in df.set_index("trial_id").loc["d", "error"]


def test_closed_loop_keeps_n_requests_in_flight(tmp_path):
    from fake_ollama import FakeOllama

    with FakeOllama(token_gap_s=0.05) as f:
        r = Runner(OllamaBackend(f.url), RunStore(tmp_path), progress=False)
        df = r.closed_loop("good", 4, 12, series="c4")
        busy = ((df["t_end_ns"] - df["t_send_ns"]).sum()) / (df["t_end_ns"].max() - df["t_send_ns"].min())
        assert len(df) == 12 and df["ok"].all() and df["stream"].nunique() == 4
        assert 3.0 < busy <= 4.05 and steady_window(df, 4)["steady"]
        assert goodput(df, ttft_s=10) == pytest.approx(request_rate(df))
        assert goodput(df, ttft_s=0) == 0
        again = r.closed_loop("good", 4, 12, series="c4")  # done: read back, not re-run
        assert len(again) == 12 and len(f.requests) < 12 + 5 + 12


def test_open_loop_poisson_arrivals_are_seeded(tmp_path):
    from fake_ollama import FakeOllama

    with FakeOllama(token_gap_s=0.01) as f:
        r = Runner(OllamaBackend(f.url), RunStore(tmp_path), progress=False)
        a = r.open_loop("good", 20.0, 10, series="o1", seed=3).sort_values("index")
        b = r.open_loop("good", 20.0, 10, series="o2", seed=3).sort_values("index")
        assert list(a["scheduled_s"]) == list(b["scheduled_s"])
        assert a["send_lag_s"].max() < 0.2 and a["ok"].all()
        gaps = a["scheduled_s"].diff().dropna()
        assert 0.01 < gaps.mean() < 0.2  # mean inter-arrival ≈ 1/20 s
