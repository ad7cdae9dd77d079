"""A run made before store versions existed (format 1) still reads: ``perfkit report`` re-renders it, ``perfkit
compare`` compares it, and its figures are the ones the perfkit that made it computed.

The fixture ``tests/data/runs/20261205-055230-oldformat-5887b7`` is a real run of cold start and config tuning on the
embedded engine, made by perfkit at commit 4d5a6d5 (before typed events and versions) with ``params/smoke.yaml``'s
two studies at a 0.5 s sampling interval; its server logs, parquet copies, figures, reports and notebooks are left
out (regenerable, or not read). ``<run>.figures.json`` holds the figures that perfkit computed from the full run.
Never regenerate the fixture with a newer perfkit: it is the earlier format on purpose (the first test checks).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from perfkit.cli import main
from perfkit.core import events as E, formats, runload
from perfkit.core.store import RunStore

DATA = Path(__file__).resolve().parent / "data" / "runs"
RUN = DATA / "20261205-055230-oldformat-5887b7"
EXPECTED = json.loads((DATA / f"{RUN.name}.figures.json").read_text())["figures"]
STUDIES = ("cold_start", "config_tuning")


def _copy(tmp_path: Path, name: str = RUN.name) -> Path:
    dst = tmp_path / "results" / name
    shutil.copytree(RUN, dst)
    return dst


def _data_files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for s in STUDIES for p in sorted((run / s).glob("*"))
            if p.suffix in (".jsonl", ".json") and p.name not in ("figures.json", "replicate-figures.json",
                                                                    "progress.json")}


def test_the_fixture_is_in_the_earlier_format():
    for s in STUDIES:
        for f in formats.FILES:
            path = runload.log_path(RUN / s, f)
            if path.exists():
                assert all(formats.ROW_KEY not in json.loads(line) for line in path.read_text().splitlines()), path
        assert formats.MANIFEST_KEY not in json.loads((RUN / s / "manifest.json").read_text())


def test_a_run_of_the_earlier_format_reads_in_the_current_shape():
    data = runload.load(RUN / "cold_start")
    assert data.damage == [] and not data.manifest_missing and data.manifest_problem is None
    assert data.formats == {"trials": [1], "events": [1], "samples": [1], "manifest": [1]}
    assert data.manifest[formats.MANIFEST_KEY] == formats.FORMAT and data.manifest["study"] == "cold_start"
    ev = data.events_frame()
    bw = E.last_of(ev, E.ReadBandwidth)  # format 1 said "seconds"; the current shape says read_s
    assert bw is not None and bw["read_s"] > 0 and "seconds" not in bw and bw["bytes_s"] > 0
    assert E.last_of(ev, E.DeviceFound)["device"] == "cpu"
    assert E.last_of(ev, E.LooksTaken)["name"] == "warmup strategies"
    trials = data.trials_frame()
    assert len(trials) == len(data.trials) and set(runload.TRIAL_COLUMNS) <= set(trials.columns)
    assert formats.ROW_KEY not in trials.columns
    ct = runload.load(RUN / "config_tuning")
    done = E.events_of(ct.events_frame(), E.SeriesDone)
    assert set(done["series"]) >= {"cfg0/c1", "cfg0/c2", "cfg1/c1", "cfg1/c2"} and done["client_loop_busy"].notna().all()
    assert ct.resources and "res_noisy" in ct.trials_frame().columns  # resources joined to their trials


def test_a_resumed_earlier_run_holds_both_formats_and_reads_as_one(tmp_path):
    run = _copy(tmp_path)
    store = RunStore(run / "cold_start")
    n = len(store.trials())
    store.append_trial({"trial_id": "resumed/0", "ok": True, "e2e_s": 0.1})
    store.emit(E.Resumed(skipped=n, desc="cache states"))
    data = runload.load(run / "cold_start")
    assert data.formats["trials"] == [1, 2] and data.formats["events"] == [1, 2]
    assert len(store.trials()) == n + 1 and "resumed/0" in store.done_ids()
    assert E.last_of(store.events(), E.Resumed)["skipped"] == n
    last = json.loads((run / "cold_start" / "trials.jsonl").read_text().splitlines()[-1])
    assert last[formats.ROW_KEY] == formats.FORMAT  # each new row says its format


def test_a_run_of_a_newer_format_is_refused_not_read_by_luck(tmp_path):
    run = _copy(tmp_path)
    with open(run / "cold_start" / "events.jsonl", "a") as f:
        f.write(json.dumps({formats.ROW_KEY: formats.FORMAT + 1, "kind": "warp", "speed_c": 9}) + "\n")
    with pytest.raises(formats.NewerFormat, match=f"store format {formats.FORMAT + 1}; this perfkit reads"):
        RunStore(run / "cold_start").events()


def test_the_figures_of_the_earlier_run_are_those_its_perfkit_computed(tmp_path):
    from perfkit.run import figures as run_figures

    run = _copy(tmp_path)
    assert sorted(run_figures.ensure(run)) == list(STUDIES)
    for s in STUDIES:
        got = {f["key"]: f["estimate"] for f in json.loads((run / s / "figures.json").read_text())["figures"]}
        want = EXPECTED[s]
        assert sorted(got) == sorted(want), f"{s}: figures appeared or went missing"
        for key, w in want.items():
            e = got[key]
            same = (e["value"] is None and w["value"] is None) or e["value"] == pytest.approx(w["value"], rel=1e-9,
                                                                                              nan_ok=True)
            assert same and e["n"] == w["n"], f"{key}: {e['value']} (n={e['n']}), made as {w['text']}"


def test_perfkit_report_and_compare_read_a_run_of_the_earlier_format(tmp_path, capsys):
    a, b = _copy(tmp_path, RUN.name), _copy(tmp_path, RUN.name.replace("5887b7", "5887b8"))
    before = _data_files(a)
    assert main(["compare", str(a), str(b)]) == 0
    out = a.parent / f"compare-{a.name}-vs-{b.name}"
    d = json.loads((out / "comparison.json").read_text())
    assert len(d["rows"]) == sum(len(v) for v in EXPECTED.values()) - sum(
        1 for v in EXPECTED.values() for w in v.values() if w["value"] is None)
    assert not [r for r in d["rows"] if r["verdict"] in ("improved", "worse")]  # a run against itself
    assert "Traceback" not in (out / "comparison.html").read_text()
    assert main(["report", str(a)]) == 0
    for s in STUDIES:
        page = (a / f"{s}.html").read_text()
        assert "Traceback" not in page and 'data-mime-type="application/vnd.jupyter.stderr"' not in page
    assert _data_files(a) == before  # reading never rewrites a run's data: it stays the format it was made in
    assert "re-rendered" in capsys.readouterr().out
