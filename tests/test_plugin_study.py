"""A study added through the plugin interface alone (tests/plugins/toy_study.py, its notebook, its parameter
section; no edit anywhere in perfkit) runs, reports and compares: against the scripted-wire Ollama."""

import json
import os
import sys
from pathlib import Path

import pytest

from perfkit.cli import main
from perfkit.studies import params, registry

PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture
def toy_env(monkeypatch):
    # The papermill kernel imports the plugin too: it finds it on PYTHONPATH and in $PERFKIT_STUDIES.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(registry.ENV, "toy_study")
    monkeypatch.syspath_prepend(str(PLUGINS))
    yield
    registry.unregister("toy")
    sys.modules.pop("toy_study", None)


def test_a_toy_study_runs_reports_and_compares(tmp_path, fake_ollama, toy_env):
    assert "toy" in registry.names()
    p = tmp_path / "toy.yaml"
    p.write_text(f"name: toy\nbackend: {{kind: ollama, url: '{fake_ollama.url}'}}\n"
                 "studies:\n  toy: {model: good, reps: 4}\n")
    assert params.load(p).enabled() == ["toy"]
    with pytest.raises(Exception, match=r"studies.toy.reps: .*less than or equal to 100"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(p.read_text().replace("reps: 4", "reps: 1000"))
        params.load(bad)
    results = tmp_path / "results"
    for _ in range(2):
        assert main(["run", str(p), "--results", str(results)]) == 0
    a, b = sorted(d for d in results.iterdir() if (d / "run.json").exists())
    for run in (a, b):
        info = json.loads((run / "run.json").read_text())
        assert info["studies"]["toy"]["status"] == "done"
        page = (run / "toy.html").read_text()
        assert "A warm request&#x27;s first token" in page or "A warm request's first token" in page
        figs = json.loads((run / "toy" / "figures.json").read_text())
        (f,) = figs["figures"]
        assert f["key"] == "toy/ttft/good" and f["estimate"]["n"] == 4 and f["headline"] == "toy TTFT"
    index = (results / "index.html").read_text()
    assert "toy TTFT" in index
    assert main(["report", str(a)]) == 0
    assert main(["compare", str(a), str(b)]) == 0
    out = results / f"compare-{a.name}-vs-{b.name}"
    d = json.loads((out / "comparison.json").read_text())
    assert [r["key"] for r in d["rows"]] == ["toy/ttft/good"] and d["rows"][0]["verdict"]
    assert (out / "comparison.html").exists()
