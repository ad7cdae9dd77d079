import subprocess
import sys

import pytest

from perfkit.cli import main


def perfkit(*args):
    return subprocess.run([sys.executable, "-m", "perfkit", *args], capture_output=True, text=True, timeout=120)


def test_help_explains_each_command():
    r = perfkit("--help")
    assert r.returncode == 0 and "perfkit run params/demo.yaml" in r.stdout
    for cmd in ("run", "report", "models", "engine"):
        h = perfkit(cmd, "--help")
        assert h.returncode == 0 and "usage: perfkit " + cmd in h.stdout


@pytest.mark.parametrize("argv,msg", [
    (["run", "nope.yaml"], "perfkit: error: nope.yaml: no such parameter file"),
    (["run", "params/smoke.yaml", "--study", "speed"], "unknown study 'speed'; allowed: cold_start"),
    (["report", "/tmp"], "is not a perfkit run"),
    (["engine", "start", "--set", "OLLAMA_NUM_PARALEL=2"], "unknown setting 'OLLAMA_NUM_PARALEL'"),
])
def test_errors_are_one_clear_line_without_traceback(argv, msg, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PERFKIT_CACHE", str(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_bad_param_file_fails_before_any_work(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text("name: x\nstudies:\n  cold_start: {model: m, reps: 0}\n")
    assert main(["run", str(p), "--results", str(tmp_path / "res")]) == 2
    assert "studies.cold_start.reps" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()
