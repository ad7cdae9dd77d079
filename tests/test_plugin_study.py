"""A study added through the plugin interface alone (tests/plugins/toy_study.py, its notebook, its parameter
section; no edit anywhere in perfkit) runs, reports and compares: against the scripted-wire Ollama."""

import json
import os
import sys
from pathlib import Path

import pytest

from perfkit import kinds
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


@pytest.fixture
def toy_kind_env(monkeypatch, toy_env):
    monkeypatch.setenv(kinds.ENV, "toy_kind")
    yield
    kinds.unregister("toy-server")
    sys.modules.pop("toy_kind", None)


def test_a_toy_server_kind_is_added_through_the_interface_alone(tmp_path, fake_openai, toy_kind_env):
    """No edit in perfkit: the kind is recognised, its section checked, its settings named its own way, its
    space offered to tuning and its deploy file written; the toy study runs and reports on it."""
    from perfkit.core import settings
    from perfkit.studies.tuning import deploy as tuning_deploy

    assert "toy-server" in kinds.names()
    assert kinds.probe("toy-server", fake_openai.url, {}, "backend.url") == f"a toy server at {fake_openai.url}"
    assert settings.role_of("TOY_SLOTS") == settings.PARALLEL
    assert kinds.tuning_space("toy-server") == {settings.name_of(settings.PARALLEL): [1, 3]}
    p = tmp_path / "toy.yaml"
    p.write_text(f"name: toy\nbackend: {{kind: toy-server, url: '{fake_openai.url}'}}\n"
                 "studies:\n  toy: {model: good, reps: 3}\n")
    assert params.load(p).backend.kind == "toy-server"
    bad = tmp_path / "bad.yaml"
    bad.write_text(p.read_text().replace("kind: toy-server,", "kind: toy-server, endpoint: completions,"))
    with pytest.raises(Exception, match=r"endpoint is used only with kind"):
        params.load(bad)

    class Res:
        winner_settings, winner, objective, cold = {"TOY_SLOTS": 3}, "s1", "rate", {}

    files = tuning_deploy.write(tmp_path / "run" / "tuning" / "tuned", Res, "toy-server", "r1", "good")
    assert (tmp_path / "run" / "tuning" / "tuned" / "toy.conf").read_text().endswith("slots = 3\n")
    assert "toy.conf" in files and "ollama.env" in files  # the settings mean the same to every kind
    results = tmp_path / "results"
    assert main(["run", str(p), "--results", str(results)]) == 0
    (run,) = [d for d in results.iterdir() if (d / "run.json").exists()]
    assert json.loads((run / "run.json").read_text())["studies"]["toy"]["status"] == "done"
    manifest = json.loads((run / "toy" / "manifest.json").read_text())
    assert manifest["backend"]["backend"] == "toy-server"
