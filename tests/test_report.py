"""Every study notebook through papermill with params/smoke.yaml on the real engine, the HTML
reports, `perfkit report` with no server, and failures that name the cell."""

import html as htmllib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import llama_server_pids
from perfkit.run import publish
from perfkit.analysis.requests import est
from perfkit.core.units import SECONDS

pytestmark = pytest.mark.notebooks
ROOT = Path(__file__).resolve().parent.parent
# The fleet study needs nginx; without it the run skips that study with a line saying how to install it.
from perfkit.servers.nginx import nginx_binary  # noqa: E402

STUDIES = ["cold_start", "model_size", "quantization", "config_tuning", "workload", "tuning"] + (
    ["fleet"] if nginx_binary() else [])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, store_dir):
    results = tmp_path_factory.mktemp("results")
    r = subprocess.run([sys.executable, "-m", "perfkit", "run", str(ROOT / "params" / "smoke.yaml"),
                        "--results", str(results)], capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (run_dir,) = [p for p in results.iterdir() if (p / "run.json").exists()]
    return results, run_dir


def test_every_study_published_without_code_or_errors(smoke_run):
    results, run_dir = smoke_run
    info = json.loads((run_dir / "run.json").read_text())
    assert [s for s, v in info["studies"].items() if v["status"] == "done"] == STUDIES
    index = (results / "index.html").read_text()
    for study in STUDIES:
        page = (run_dir / f"{study}.html").read_text()
        assert f'href="{run_dir.name}/{study}.html"' in index
        assert "run_or_load(" not in page and "import matplotlib" not in page  # code hidden
        assert "Traceback" not in page and "output_error" not in page and "output_stderr" not in page
        assert 'class="plotly-chart"' in page or "data:image/png;base64," in page  # charts or plots embedded
        assert "What the measurements say" in page and "Provenance" in page and "llama-server" in page
        assert (run_dir / study / "trials.jsonl").exists() and (run_dir / study / "manifest.json").exists()
        assert (run_dir / study / "trials.parquet").exists()
        assert (run_dir / "notebooks" / f"{study}.ipynb").exists()
    assert not llama_server_pids()


def test_conclusions_are_built_from_the_recorded_data(smoke_run):
    _, run_dir = smoke_run
    trials = [json.loads(x) for x in (run_dir / "cold_start" / "trials.jsonl").read_text().splitlines()]
    # The statistic the report states, recomputed from the raw lines: successful warm trials whose
    # cache state check did not fail.
    warm = [t["e2e_s"] for t in trials if t["trial_id"].startswith("state/warm/") and t["ok"]
            and t.get("state_verified") is not False]
    expected = SECONDS.estimate(est(warm))
    page = htmllib.unescape((run_dir / "cold_start.html").read_text())
    assert f"takes {expected} end to end" in page
    ms = json.loads((run_dir / "model_size" / "manifest.json").read_text())
    assert ms["models"]["gemma3-270m-q4_k_m"]["quantization"] == "Q4_K_M"
    assert "sampling_unavailable" in ms and ms["host"]["cpu_cores_logical"] >= 1


def test_config_tuning_shows_the_engines_own_metrics_under_load(smoke_run):
    """The engine runs with --metrics; its queue and slots, read during each series, reach the report. With one
    slot (NUM_PARALLEL=1) it never runs two requests at once, whatever the clients send."""
    _, run_dir = smoke_run
    ev = [json.loads(x) for x in (run_dir / "config_tuning" / "events.jsonl").read_text().splitlines()]
    res = {e["series"]: e for e in ev if e["kind"] == "series_resources"}
    assert {"cfg0/c1", "cfg0/c2", "cfg1/c1", "cfg1/c2", "cfg0/r4", "cfg1/r4"} <= set(res)
    # A series' window is its requests' own span: one too short for two scrapes says so instead of a figure. The
    # open-loop series (6 requests at 4 req/s) are long enough.
    seen = {s: r for s, r in res.items() if "server_requests_running_max" in r}
    assert all("too short for the scrape interval" in (r.get("unknown_because") or "") for s, r in res.items()
               if s not in seen)
    assert {"cfg0/r4", "cfg1/r4"} <= set(seen)
    assert max(r["server_requests_running_max"] for r in seen.values()) >= 1
    assert all(seen[s]["server_requests_running_max"] <= 1 for s in seen if s.startswith("cfg0/"))
    page = htmllib.unescape(re.sub(r"<[^>]+>", " ", (run_dir / "config_tuning.html").read_text()))
    assert "What the server and its host did under load" in page and "requests running" in page
    assert "the engine's own metrics" in page  # its source, in the provenance


def test_report_rerenders_with_no_server(smoke_run, tmp_path):
    results, run_dir = smoke_run
    copy = tmp_path / "results" / run_dir.name
    shutil.copytree(run_dir, copy)
    for study in STUDIES:
        (copy / f"{study}.html").unlink()
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.extend(llama_server_pids())
            time.sleep(0.05)

    w = threading.Thread(target=watch)
    w.start()
    try:
        r = subprocess.run([sys.executable, "-m", "perfkit", "report", str(copy)], capture_output=True, text=True,
                           timeout=600, cwd=ROOT)
    finally:
        stop.set()
        w.join()
    assert r.returncode == 0, r.stderr[-2000:]
    assert not seen  # no server was started
    for study in STUDIES:
        assert "What the measurements say" in (copy / f"{study}.html").read_text()
    assert (tmp_path / "results" / "index.html").exists()


def test_resume_skips_finished_studies(smoke_run):
    results, run_dir = smoke_run
    r = subprocess.run([sys.executable, "-m", "perfkit", "run", str(ROOT / "params" / "smoke.yaml"),
                        "--resume", str(run_dir), "--study", "cold_start"], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0 and "already done in this run: skipped" in r.stdout


def test_failing_notebook_names_the_cell_and_keeps_data(tmp_path, store_dir):
    run_dir = tmp_path / "run"
    (run_dir / "model_size").mkdir(parents=True)
    (run_dir / "model_size" / "trials.jsonl").write_text('{"trial_id": "kept", "ok": true}\n')
    (run_dir / "model_size" / "manifest.json").write_text('{"cut short')  # a damaged file fails the analysis
    shutil.copyfile(ROOT / "params" / "smoke.yaml", run_dir / "params.yaml")
    with pytest.raises(publish.StudyFailed, match=r"study model_size failed in cell \d+: \w+") as e:
        publish.execute("model_size", run_dir / "params.yaml", run_dir, measure=False)
    assert "data measured so far is kept" in str(e.value)
    assert (run_dir / "model_size" / "trials.jsonl").read_text().startswith('{"trial_id": "kept"')


def test_ctrl_c_stops_everything_keeps_data_and_resumes(tmp_path, store_dir):
    """Ctrl-C mid-study: exit 130, no server or kernel left, trials kept; --resume finishes the rest only."""
    import signal

    def count(pattern):
        return len(subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split())

    results = tmp_path / "res"
    argv = [sys.executable, "-m", "perfkit", "run", str(ROOT / "params" / "smoke.yaml"), "--study", "cold_start"]
    p = subprocess.Popen(argv + ["--results", str(results)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        trials = None
        while time.monotonic() < deadline:
            found = list(results.glob("*/cold_start/trials.jsonl"))
            if found and len(found[0].read_text().splitlines()) >= 3:
                trials = found[0]
                break
            time.sleep(0.2)
        assert trials is not None, "no trial recorded"
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=60) == 130
    finally:
        p.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (llama_server_pids() or count("ipykernel_launcher")):
        time.sleep(0.2)
    assert not llama_server_pids() and not count("ipykernel_launcher")
    run_dir = trials.parent.parent
    assert json.loads((run_dir / "run.json").read_text())["studies"]["cold_start"]["status"] == "interrupted"
    kept = [json.loads(x)["trial_id"] for x in trials.read_text().splitlines()]
    r = subprocess.run(argv + ["--resume", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    ids = [json.loads(x)["trial_id"] for x in trials.read_text().splitlines()]
    assert ids[:len(kept)] == kept
    assert len(ids) == len(set(ids))  # nothing measured twice (a torn last line at most is re-run)
    assert json.loads((run_dir / "run.json").read_text())["studies"]["cold_start"]["status"] == "done"


def _ollama_params(tmp_path, url, headers=None, name="fo"):
    hdr = "".join(f"    {k}: \"{v}\"\n" for k, v in (headers or {}).items())
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"name: {name}\nbackend:\n  kind: ollama\n  url: {url}\n" + (f"  headers:\n{hdr}" if hdr else "")
                 + "timeouts: {request_s: 30}\nsampling: {interval_s: 0.2, gpu: false}\nstudies:\n  cold_start:\n"
                   "    model: good\n    states: [warm]\n    reps: 3\n    strategies: [none]\n    strategy_reps: 1\n"
                   "    idle_gaps_s: [0.1]\n")
    return p


def test_no_header_value_anywhere_under_the_run_directory(tmp_path, fake_ollama):
    """A real papermill run against an Ollama behind an auth proxy: the headers are sent, never recorded."""
    secrets = {"Authorization": "Bearer tok-5ecret-abc", "X-Api-Key": "key-5ecret-def"}
    p = _ollama_params(tmp_path, fake_ollama.url, secrets)
    r = subprocess.run([sys.executable, "-m", "perfkit", "run", str(p), "--results", str(tmp_path / "res")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert {h.get("Authorization") for h in fake_ollama.headers_seen} == {secrets["Authorization"]}
    (run_dir,) = [d for d in (tmp_path / "res").iterdir() if (d / "run.json").exists() or d.name.startswith("2")]
    leaks = [str(f) for f in run_dir.rglob("*") if f.is_file()
             for v in ("tok-5ecret-abc", "key-5ecret-def") if v.encode() in f.read_bytes()]
    assert leaks == []
    assert "'***'" in (run_dir / "params.yaml").read_text()
    assert "tok-5ecret" not in r.stdout + r.stderr
    rr = subprocess.run([sys.executable, "-m", "perfkit", "report", str(run_dir)], capture_output=True, text=True,
                        timeout=300, cwd=ROOT)  # the redacted copy is enough to render
    assert rr.returncode == 0, rr.stderr[-2000:]


def test_two_runs_started_together_get_two_directories_and_share_no_trial(tmp_path, fake_ollama):
    from fake_ollama import FakeOllama

    # One server each: two cold-start runs on one server unload each other's model (a race of the test's
    # making); what is tested is the results directory and the trials, not a shared server's state.
    with FakeOllama() as other:
        argv = []
        for sub, url in (("a", fake_ollama.url), ("b", other.url)):  # same run name, one server each
            (tmp_path / sub).mkdir()
            argv.append([sys.executable, "-m", "perfkit", "run", str(_ollama_params(tmp_path / sub, url)),
                         "--results", str(tmp_path / "res")])
        procs = [subprocess.Popen(a, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for a in argv]
        outs = [pr.communicate(timeout=300)[0] for pr in procs]
    assert [pr.returncode for pr in procs] == [0, 0], outs
    dirs = sorted(d for d in (tmp_path / "res").iterdir() if (d / "run.json").exists() or d.name.startswith("2"))
    assert len(dirs) == 2
    sends = []
    for d in dirs:
        rows = [json.loads(x) for x in (d / "cold_start" / "trials.jsonl").read_text().splitlines()]
        ids = [r["trial_id"] for r in rows]
        assert len(ids) == len(set(ids)) and any(i.startswith("state/warm/") for i in ids)
        sends.append({r["t_send_ns"] for r in rows if r.get("t_send_ns")})
    assert sends[0] and sends[1] and not sends[0] & sends[1]


# ---- in a real browser (Debian's chromium, playwright) -------------------------------------------------------

def _same_origin_links(v, origin: str) -> list[str]:
    return sorted({u.split("#", 1)[0] for u in v.links if u.startswith(origin)})


# What a page for people never shows: a Python repr, a pandas repr, a raw exception, HTML source as text, text
# escaped twice, or words only the developers use.
BAD_TEXT = ("object at 0x", "Estimate(", "Row(", "Figure(", "Traceback", "Error(", "<html", "<!doctype", "&#x27;",
            "&amp;", "&lt;", "dtype:", "rows × ", "seed guide", "the seed's", "seed config", "the guide")


def test_the_site_in_a_real_browser(smoke_run):
    """Titles name the study and the run; no console error; nothing fetched from anywhere but the results
    directory; every link resolves; no raw repr or NaN on a page; charts drawn; the comparison of a run with
    itself shows every row and says A and B are the same run."""
    import urllib.request

    from browser import browser, need_browser, serve, visit

    need_browser()
    results, run_dir = smoke_run
    r = subprocess.run([sys.executable, "-m", "perfkit", "compare", str(run_dir), str(run_dir)], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    comparison = results / f"compare-{run_dir.name}-vs-{run_dir.name}"
    rows = len(json.loads((comparison / "comparison.json").read_text())["rows"])
    pages = [("index.html", "perfkit results")] + [(f"{run_dir.name}/{s}.html", run_dir.name) for s in STUDIES] + [
        (f"{comparison.name}/comparison.html", "what changed")]
    with serve(results) as origin, browser() as b:
        checked: set[str] = set()
        for rel, want_title in pages:
            v = visit(b, f"{origin}/{rel}", origin)
            assert want_title in v.title, (rel, v.title)
            assert v.console_errors == [], (rel, v.console_errors)
            assert v.foreign_requests == [] and v.failed_requests == [], (rel, v.foreign_requests, v.failed_requests)
            for bad in BAD_TEXT:
                assert bad.lower() not in v.text.lower(), (rel, bad)
            assert " nan " not in f" {v.text.lower()} ".replace("\n", " "), rel
            for link in _same_origin_links(v, origin):
                if link not in checked:
                    checked.add(link)
                    with urllib.request.urlopen(link) as resp:  # every link of the site resolves
                        assert resp.status == 200, link
            if rel.endswith(".html") and rel != "index.html" and "compare-" not in rel:
                assert "Contents" in v.text and "main-svg" in v.html, rel  # a table of contents; plotly drew
        v = visit(b, f"{origin}/{comparison.name}/comparison.html", origin)
        assert "A and B are the same run" in v.text
        assert v.html.count('<tr class="group">') >= 1 and v.html.count("<tr>") >= rows
    assert len(checked) > 10


def test_the_site_after_a_second_run_in_a_real_browser(smoke_run, tmp_path):
    """A second run into the same results: the index shows both and the newest run's before/after table; every
    page's reports bar lists the reports that exist now (not those at its render time); every link resolves."""
    import urllib.request

    from browser import browser, need_browser, serve, visit

    need_browser()
    first_results, first = smoke_run
    results = tmp_path / "results"
    shutil.copytree(first_results, results)
    r = subprocess.run([sys.executable, "-m", "perfkit", "run", str(ROOT / "params" / "smoke.yaml"), "--study",
                        "quantization", "--study", "cold_start", "--results", str(results)], capture_output=True,
                       text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    second = next(p for p in results.iterdir() if (p / "run.json").exists() and p.name != first.name)
    with serve(results) as origin, browser() as b:
        v = visit(b, f"{origin}/index.html", origin)
        assert first.name in v.text and second.name in v.text
        assert f"Before and after, in the newest run ({second.name})" in v.text
        assert "no warmup" in v.text and "after / before" in v.text
        for run, studies in ((first, STUDIES), (second, ["cold_start", "quantization"])):
            for study in studies:
                v = visit(b, f"{origin}/{run.name}/{study}.html", origin)
                for bad in BAD_TEXT:
                    assert bad.lower() not in v.text.lower(), (run.name, study, bad)
                assert "none yet" not in v.text, (run.name, study)
                links = _same_origin_links(v, origin)
                for other in studies:  # the reports bar: every report of the run, rendered before or after this one
                    assert f"{origin}/{run.name}/{other}.html" in links, (run.name, study, other)
                for link in links:
                    with urllib.request.urlopen(link) as resp:
                        assert resp.status == 200, link


def test_a_replay_with_another_parameter_file_shows_the_runs_own_data(smoke_run, tmp_path):
    _, run_dir = smoke_run
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    other = tmp_path / "other.yaml"
    other.write_text((ROOT / "params" / "demo.yaml").read_text())  # other models, other SLOs
    out = publish.execute("model_size", other, copy, measure=False)
    text = out.read_text()
    assert "differs and was ignored" in text
    assert "smollm2-135m-q4_1" in text and "gemma3-270m-q4_k_m" in text  # the run's own two models


def test_a_headline_figure_has_one_value_on_its_page_in_the_index_and_in_compare(smoke_run):
    """The figure the index shows for a study is the one its page states and the one `perfkit compare`
    compares, formatted the same: one definition, one value, wherever it appears."""
    from perfkit.analysis.figures import FILE_NAME, FigureSet
    from perfkit.compare.comparison import compare

    results, run_dir = smoke_run
    rows = {r.key: r for r in compare(run_dir, run_dir).rows}
    index = htmllib.unescape((results / "index.html").read_text())
    checked = 0
    for study in STUDIES:
        page = htmllib.unescape((run_dir / f"{study}.html").read_text())
        for fig in FigureSet.read(run_dir / study / FILE_NAME).headlines():
            value = fig.unit.text(fig.value)
            assert value in page, (study, fig.key, value)
            assert fig.key in rows and rows[fig.key].before.startswith(value), (study, fig.key, value)
            checked += 1
    assert checked >= len(STUDIES)
    assert any(f.unit.text(f.value) in index
               for f in FigureSet.read(run_dir / STUDIES[0] / FILE_NAME).headlines())
