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


@pytest.mark.parametrize("argv,msg", [
    (["run", "params/smoke.yaml", "--resume", "/nonexistent/run"], "--resume /nonexistent/run: no such run directory"),
    (["run", "params/smoke.yaml", "--resume", "/tmp"], "--resume /tmp: not a perfkit run directory (no run.json)"),
    (["report", "/nonexistent/run"], "/nonexistent/run: no such run directory"),
    (["run", "params"], "params: is a directory, not a parameter file"),
])
def test_more_errors_are_one_clear_line(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


@pytest.mark.parametrize("port", ["0", "99999", "-1", "http"])
def test_engine_port_is_checked_by_the_parser(port, capsys):
    with pytest.raises(SystemExit) as e:
        main(["engine", "start", "--port", port])
    assert e.value.code == 2 and "is not a port number (1-65535)" in capsys.readouterr().err


def test_help_documents_resume_rules_retry_and_damage(capsys):
    for argv in (["run", "--help"], ["report", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
    out = capsys.readouterr().out
    assert "--retry-failed" in out and "redacted" in out and "--allow-damaged" in out


def test_sigterm_unwinds_like_ctrl_c_and_exits_143(monkeypatch, capsys):
    import signal

    from perfkit import cli

    def stop(a):
        cli._sigterm(signal.SIGTERM, None)  # what the handler does when SIGTERM arrives

    monkeypatch.setattr(cli, "cmd_report", stop)
    parser = cli.build_parser

    def patched():
        p = parser()
        p._subparsers._group_actions[0].choices["report"].set_defaults(fn=stop)
        return p

    monkeypatch.setattr(cli, "build_parser", patched)
    try:
        assert main(["report", "x"]) == 143
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    assert "stopped by SIGTERM; servers stopped, everything measured is kept" in capsys.readouterr().err


def test_a_parameter_file_from_a_pipe_is_read_like_a_file():
    """`perfkit run <(envsubst < p.yaml)`: the shell hands perfkit a pipe, read once and checked like a file."""
    r = subprocess.run(["bash", "-c", f"{sys.executable} -m perfkit run <(printf 'bogus_key: 1\\n')"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "unknown key 'bogus_key'" in r.stderr and "not a regular file" not in r.stderr, r.stderr


def test_lab_passes_jupyters_own_options_through_and_opens_on_the_project(monkeypatch):
    """`perfkit lab --no-browser --port 8899` (the README's example): every option reaches Jupyter as given, and
    the lab's root is the project, so results/ is reachable beside notebooks/."""
    import os

    from perfkit import cli
    from perfkit.studies.base import NOTEBOOKS

    got = {}

    def execv(exe, cmd):
        got["cmd"] = cmd
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", execv)
    with pytest.raises(SystemExit):
        cli.main(["lab", "--no-browser", "--port", "8899"])
    cmd = got["cmd"]
    assert cmd[-3:] == ["--no-browser", "--port", "8899"]
    assert f"--ServerApp.root_dir={NOTEBOOKS.parent}" in cmd and "--LabApp.default_url=/lab/tree/notebooks" in cmd
