"""The CI gate, baselines and the history: exit codes a CI step can trust (A/A passes, a real regression fails, runs
that can't be compared are inconclusive), baselines keyed by what makes runs comparable, every run's figures in a
DuckDB database and a history page that marks where a figure changed and what changed then."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perfkit.analysis import figures as F
from perfkit.analysis.figures import FigureSet
from perfkit.cli import main
from perfkit.compare import history
from perfkit.compare.gate import INCONCLUSIVE, PASS, REGRESSION, gate

HOST = {"cpu": "AMD EPYC 9654", "cpu_cores_logical": 2, "memory_total_bytes": 24 * 2**30, "gpus": []}


def make_run(root: Path, name: str, rng: np.random.Generator, *, ttft_x: float = 1.0, decode_x: float = 1.0,
             n: int = 30, created: str = "2026-12-01T00:00:00Z", digest: str = "sha256:aaaa", settings=None,
             cpu: str | None = None) -> Path:
    """A run as perfkit writes it (figures.json, manifest.json, run.json), from per-request samples drawn here:
    warm TTFT ~ 80 ms and decode ~ 40 tok/s, each lognormal with a 25 % spread, scaled by ``ttft_x`` / ``decode_x``."""
    run, study = root / name, root / name / "cold_start"
    study.mkdir(parents=True)
    ttft = 0.08 * ttft_x * rng.lognormal(0, 0.25, n)
    dec = 40 / decode_x * rng.lognormal(0, 0.25, n)
    rows = pd.DataFrame({"ttft_s": ttft, "decode_tok_s": dec})
    w = {"cache_state": "warm"}
    FigureSet([F.per_request("cold_start", "ttft", rows, "ttft_s", where=w, model="m", headline="warm start"),
               F.per_request("cold_start", "decode_rate", rows, "decode_tok_s", where=w, model="m")]
              ).write(study / "figures.json")
    (study / "manifest.json").write_text(json.dumps({
        "host": {**HOST, **({"cpu": cpu} if cpu else {})}, "backend": {"backend": "llama-server", "version": "b7000"},
        "models": {"m": {"digest": digest}},
        "params": {"backend": {"settings": settings or {}}, "studies": {"cold_start": {"reps": n}}}}))
    (run / "run.json").write_text(json.dumps({"run_id": name, "params_name": "ci", "created_utc": created,
                                              "studies": {"cold_start": {"status": "done"}}}))
    return run


def test_a_a_runs_pass_the_gate(tmp_path, capsys):
    """120 pairs of runs of the same thing (simulated, so the truth is known): the gate passes ≥ 95 % of them."""
    rng = np.random.default_rng(7)
    codes = [gate(make_run(tmp_path, f"a{k}", rng), make_run(tmp_path, f"b{k}", rng)).code for k in range(120)]
    share = codes.count(PASS) / len(codes)
    print(f"A/A: {share:.1%} of 120 pairs pass; {codes.count(REGRESSION)} regressions called")
    assert share >= 0.95 and INCONCLUSIVE not in codes


def test_a_real_regression_fails_with_a_message_that_names_it(tmp_path):
    rng = np.random.default_rng(3)
    res = gate(make_run(tmp_path, "base", rng), make_run(tmp_path, "slow", rng, ttft_x=1.8))
    assert res.code == REGRESSION and [g.row.key for g in res.regressions] == ["cold_start/ttft/warm"]
    text = res.text()
    assert "REGRESSION" in text and "warm start: time to first token" in text and "worse" in text
    junit = res.junit()
    assert junit.count("<testcase") == 2 and junit.count("<failure") == 1 and "time to first token" in junit
    assert "❌" in res.markdown() and "| cold_start · warm start: time to first token (warm) |" in res.markdown()
    # Gated on the decode speed only, the same runs pass; a wide per-figure minimum effect lets TTFT through too.
    assert gate(tmp_path / "base", tmp_path / "slow", figures=["decode_rate"]).code == PASS
    assert gate(tmp_path / "base", tmp_path / "slow", min_effects={"ttft": 0.99}).code == PASS


def test_runs_that_cant_be_compared_are_inconclusive(tmp_path):
    rng = np.random.default_rng(5)
    base = make_run(tmp_path, "base", rng)
    other_model = gate(base, make_run(tmp_path, "digest", rng, ttft_x=1.8, digest="sha256:bbbb"))
    assert other_model.code == INCONCLUSIVE and "model file of m" in other_model.inconclusive[0]
    other_host = gate(base, make_run(tmp_path, "host", rng, cpu="Intel Xeon"))
    assert other_host.code == INCONCLUSIVE and "host cpu" in other_host.inconclusive[0]
    assert gate(base, tmp_path / "host", allow_other_fingerprint=True).code == PASS
    few = gate(make_run(tmp_path, "n2a", rng, n=2), make_run(tmp_path, "n2b", rng, n=2))
    assert few.code == INCONCLUSIVE and "too few" in few.inconclusive[0]
    nothing = gate(base, make_run(tmp_path, "x", rng), figures=["energy*"])
    assert nothing.code == INCONCLUSIVE and "no figure matching energy*" in nothing.inconclusive[0]


def test_the_command_saves_a_baseline_and_gates_against_it(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(11)
    store = tmp_path / "baselines"
    good, slow = make_run(tmp_path, "good", rng), make_run(tmp_path, "slow", rng, ttft_x=1.8)
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["baseline", "save", "main", str(good), "--store", str(store)]) == 0
    assert main(["baseline", "list", "--store", str(store)]) == 0
    assert "main" in capsys.readouterr().out
    junit = tmp_path / "gate.xml"
    assert main(["gate", "--baseline", "main", str(slow), "--store", str(store), "--junit", str(junit),
                 "--json", str(tmp_path / "gate.json")]) == REGRESSION
    assert "REGRESSION" in capsys.readouterr().out and "<failure" in junit.read_text()
    assert json.loads((tmp_path / "gate.json").read_text())["status"] == "regression"
    assert "perfkit gate" in summary.read_text()
    assert main(["gate", "--baseline", "main", str(make_run(tmp_path, "again", rng)), "--store", str(store)]) == PASS
    # The baseline is a copy: the run it came from can go.
    import shutil

    shutil.rmtree(good)
    assert main(["gate", "--baseline", "main", str(make_run(tmp_path, "later", rng)), "--store", str(store)]) == PASS
    # Another fingerprint under the same name is refused unless replaced; a missing baseline is named.
    other = make_run(tmp_path, "other", rng, cpu="Intel Xeon")
    assert main(["baseline", "save", "main", str(other), "--store", str(store)]) == 2
    assert "another fingerprint" in capsys.readouterr().err
    assert main(["gate", "--baseline", "nope", str(other), "--store", str(store)]) == 2
    assert "no baseline 'nope'" in capsys.readouterr().err


def _history_runs(root: Path) -> None:
    """Five runs; between the second and the third OLLAMA_NUM_PARALLEL went 1 → 4 and warm TTFT doubled."""
    rng = np.random.default_rng(19)
    for k in range(5):
        slow = k >= 2
        make_run(root, f"2026120{k + 1}-run", rng, ttft_x=2.0 if slow else 1.0, n=40,
                 created=f"2026-12-0{k + 1}T00:00:00Z", settings={"OLLAMA_NUM_PARALLEL": 4 if slow else 1})


def test_the_history_finds_the_change_and_what_changed_then(tmp_path):
    _history_runs(tmp_path)
    runs = history.runs_in(tmp_path)
    assert [r.name for r in runs] == [f"2026120{k}-run" for k in range(1, 6)]
    (ttft,) = [c for c in history.courses(runs) if c.key == "cold_start/ttft/warm"]
    assert len(ttft.points) == 5
    (change,) = ttft.changes
    assert (change.run_before, change.run_after) == ("20261202-run", "20261203-run")
    assert change.row.verdict == "worse"
    assert any("OLLAMA_NUM_PARALLEL: 1 → 4" in d for d in change.differences)
    db = history.build(tmp_path)
    df = history.query("select run_id, value from figures where tag = 'ttft' order by created_utc", db)
    assert len(df) == 5 and df["value"].iloc[-1] > 1.5 * df["value"].iloc[0]
    facts = history.query("select distinct value from facts where name = 'backend.settings.OLLAMA_NUM_PARALLEL'", db)
    assert sorted(facts["value"]) == ["1", "4"]
    with pytest.raises(Exception, match="the query failed"):
        history.query("select nope from figures", db)


@pytest.mark.notebooks
def test_the_history_page_shows_the_course_and_marks_the_change_in_a_browser(tmp_path):
    from browser import browser, serve, visit

    from perfkit.run.history_page import write_history

    _history_runs(tmp_path)
    page = write_history(tmp_path)
    with serve(tmp_path) as origin, browser() as b:
        v = visit(b, f"{origin}/{page.name}", origin, wait_ms=1500)
        p = b.new_page()
        p.goto(f"{origin}/{page.name}", wait_until="load")
        p.wait_for_timeout(1500)
        drawn = p.eval_on_selector_all(".plotly-chart .main-svg", "els => els.length")
        markers = p.eval_on_selector_all(".plotly-chart .annotation-text", "els => els.map(e => e.textContent)")
        points = p.eval_on_selector_all(".plotly-chart .scatterlayer .point", "els => els.length")
        p.close()
    assert not v.console_errors and not v.foreign_requests
    assert drawn and points >= 5
    assert any(re.match(r"worse \+\d+%", m) for m in markers), markers
    assert "20261202-run → 20261203-run" in v.text and "OLLAMA_NUM_PARALLEL: 1 → 4" in v.text


@pytest.mark.engine
def test_a_real_regression_on_the_embedded_engine_exits_1(tmp_path, store_dir):
    """Two runs of the cold-start study on the embedded engine, the second with one thread instead of two (a
    real slowdown of every token): the gate on the warm requests' figures exits 1 and names them."""
    import yaml

    from perfkit.studies.base import REPLICATE_FIGURES, StudyContext, analyze_all

    def measure(name: str, threads: int) -> Path:
        run = tmp_path / name
        run.mkdir()
        p = {"name": name, "backend": {"kind": "embedded", "settings": {"num_thread": threads}},
             "sampling": {"interval_s": 0.2},
             "studies": {"cold_start": {"model": "smollm2-135m-q4_1", "states": ["cold_memory", "warm"], "reps": 8,
                                        "strategies": ["none"], "strategy_reps": 1, "idle_gaps_s": [0.5],
                                        "num_predict": 24}}}
        (run / "params.yaml").write_text(yaml.safe_dump(p))
        ctx = StudyContext(run / "params.yaml", run, "cold_start", replicate=1)
        ctx.study.run(ctx).figures.write(ctx.store.dir / REPLICATE_FIGURES)
        analyze_all(run / "params.yaml", run, "cold_start")
        (run / "run.json").write_text(json.dumps({"params_name": name, "created_utc": name,
                                                  "studies": {"cold_start": {"status": "done"}}}))
        return run

    base, slow = measure("a-2-threads", 2), measure("b-1-thread", 1)
    res = gate(base, slow, figures=["e2e", "decode_rate", "tpot"])
    print(res.text())
    assert res.code == REGRESSION, res.text()
    assert all(g.study == "cold_start" for g in res.regressions) and "worse" in res.text()
    # The parameters differ (num_thread), the fingerprint does not: a settings change is what a gate is for.
    assert not res.differences
