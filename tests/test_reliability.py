"""A hostile user's findings, one test (or more) each: killed runs, torn lines, shared run directories,
unsafe names, damaged data, resumes with other parameters, retries, unreachable servers, signals,
secrets. Fast tests use the fake Ollama and a stand-in for papermill; ``engine`` tests kill real runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from perfkit.run import pipeline as report
from perfkit.run import publish, rundir, site
from perfkit.run import lock as runlock
from perfkit.core import children
from perfkit.cli import main
from perfkit.core.errors import ConfigError
from perfkit.core.store import JsonlLog, RunStore

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-t0ken-value"
# Subprocesses import perfkit's modules without the package's __init__ (pandas ...): 0.1 s, not 1.5 s.
LIGHT = (f"import sys, types; _p = types.ModuleType('perfkit'); _p.__path__ = [{str(ROOT / 'perfkit')!r}]; "
         "sys.modules['perfkit'] = _p\n")


# ---- helpers ---------------------------------------------------------------------------------------

@pytest.fixture
def fake_ollama():
    """conftest's fake Ollama, polled every 50 ms so that stopping it takes no half second."""
    from fake_ollama import FakeOllama

    f = FakeOllama()
    f._thread = threading.Thread(target=f.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    with f:
        yield f


def write_notebook(path: Path, *markdown: str) -> Path:
    """A minimal executed notebook (nbformat 4), written without importing nbformat (1.4 s)."""
    cells = [{"cell_type": "markdown", "id": f"c{i}", "metadata": {}, "source": text} for i, text in enumerate(markdown)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def params_file(tmp_path: Path, url: str, *, name: str = "rel", headers: dict | None = None, extra: str = "",
                fname: str = "p.yaml") -> Path:
    hdr = ""
    if headers:
        hdr = "  headers:\n" + "".join(f"    {k}: \"{v}\"\n" for k, v in headers.items())
    p = tmp_path / fname
    p.write_text(f"name: {name}\nbackend:\n  kind: ollama\n  url: {url}\n{hdr}studies:\n"
                 f"  cold_start:\n    model: good\n    states: [warm]\n    reps: 3\n{extra}")
    return p


@pytest.fixture
def fake_study(monkeypatch):
    """``report.execute`` without papermill: it 'measures' trials t0..t2 into the study's store the way
    the runner does (skipping ``store.done_ids()``, with the environment perfkit gives the kernel) and
    writes a small executed notebook. ``fail_once`` lists trials whose first attempt fails."""
    state = {"calls": [], "fail_once": set(), "attempts": {}}

    def execute(study, params_path, run_dir, *, measure=True, env=None, tick=None):
        state["calls"].append({"study": study, "params_path": Path(params_path), "env": dict(env or {}),
                               "measure": measure})
        if measure:
            saved = {k: os.environ.get(k) for k in (env or {})}
            os.environ.update(env or {})
            try:
                store = RunStore(Path(run_dir) / study)
                done = store.done_ids()
                store.write_manifest(study=study, params_file=str(params_path))
                for i in range(3):
                    tid = f"t{i}"
                    if tid in done:
                        continue
                    n = state["attempts"][tid] = state["attempts"].get(tid, 0) + 1
                    ok = not (tid in state["fail_once"] and n == 1)
                    store.append_trial({"trial_id": tid, "ok": ok, "e2e_s": 0.1 * (i + 1),
                                        **({} if ok else {"error": "HTTP 500: boom"})})
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        return write_notebook(Path(run_dir) / "notebooks" / f"{study}.ipynb", f"# {study}", "What the measurements say")

    monkeypatch.setattr(report, "execute", execute)
    monkeypatch.setattr(report, "render", lambda executed, html_path, warnings=None, notes=None, **kw:
                        html_path.write_text("<p>report</p>" + publish.warning_html(warnings or []) * bool(warnings))
                        and html_path)
    return state


def the_run(results: Path) -> Path:
    (run_dir,) = [p for p in results.iterdir() if (p / "run.json").exists()]
    return run_dir


def run_cli(*argv: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perfkit", *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def dead_pid() -> tuple[int, int]:
    """(pid, start time) of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    st = children.start_time(p.pid)
    p.wait()
    return p.pid, st


# ---- 1. one owner per run; a dead owner's processes die with it ------------------------------------

def test_lock_refuses_a_live_owner_and_takes_over_a_dead_ones(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", LIGHT +
                               "import sys,time; from perfkit.run.lock import RunLock\n"
                               "RunLock(sys.argv[1], 'perfkit run').acquire(); print('held', flush=True); time.sleep(60)",
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(runlock.RunLocked, match=rf"in use by pid {holder.pid} .*perfkit run"):
            runlock.RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    said = []
    with runlock.RunLock(tmp_path, log=said.append) as lock:  # the holder died: its lock is stale
        assert lock.took_over["pid"] == holder.pid
        assert runlock.read_lock(tmp_path)["pid"] == os.getpid()
    assert "stale lock of pid" in said[0] and "no longer running" in said[0]
    assert not (tmp_path / runlock.LOCK_NAME).exists()


def test_a_reused_pid_is_not_mistaken_for_the_owner(tmp_path):
    # The pid is alive (our own parent) but started at another time: a different process.
    ppid = os.getppid()
    (tmp_path / runlock.LOCK_NAME).write_text(json.dumps(
        {"pid": ppid, "start_time": children.start_time(ppid) + 12345, "host": socket.gethostname()}))
    said = []
    with runlock.RunLock(tmp_path, log=said.append):
        pass
    assert said and "no longer running" in said[0]
    assert not children.owner_alive({"pid": ppid, "start_time": children.start_time(ppid) + 1})
    assert children.owner_alive({"pid": ppid, "start_time": children.start_time(ppid)})


def test_status_of_a_study_whose_owner_died_reads_interrupted(tmp_path):
    pid, st = dead_pid()
    run_dir = tmp_path / "res" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"owner": {"pid": pid, "start_time": st},
                                                  "studies": {"cold_start": {"status": "running"},
                                                              "model_size": {"status": "done"}}}))
    info = rundir.read_run(run_dir)
    assert info["studies"]["cold_start"]["status"] == "interrupted (owner died)"
    assert info["studies"]["model_size"]["status"] == "done"
    site.write_index(tmp_path / "res")
    assert "cold start</a> — interrupted (owner died)" in (tmp_path / "res" / "index.html").read_text() or \
        "cold start — interrupted (owner died)" in (tmp_path / "res" / "index.html").read_text()
    (run_dir / "run.json").write_text(json.dumps({"owner": children.identity(),
                                                  "studies": {"cold_start": {"status": "running"}}}))
    assert rundir.read_run(run_dir)["studies"]["cold_start"]["status"] == "running"


def test_resume_refuses_a_run_another_live_process_owns(tmp_path, fake_ollama, fake_study, capsys):
    p = params_file(tmp_path, fake_ollama.url)
    assert main(["run", str(p), "--results", str(tmp_path / "res")]) == 0
    run_dir = the_run(tmp_path / "res")
    holder = subprocess.Popen([sys.executable, "-c", LIGHT +
                               "import sys,time; from perfkit.run.lock import RunLock\n"
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
                               str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        calls = len(fake_study["calls"])
        assert main(["run", str(p), "--resume", str(run_dir)]) == 2
        assert f"is in use by pid {holder.pid}" in capsys.readouterr().err
        assert len(fake_study["calls"]) == calls  # nothing started
    finally:
        holder.kill()
        holder.wait()


def _spawn_chain(tmp_path: Path, tag: str, kill: str) -> tuple[subprocess.Popen, list[int]]:
    """owner (stands for perfkit) → middle (papermill, started like report.execute starts it) → kernel
    (runs the lifeline and an 'engine' process group). Returns the owner and the pids below it."""
    kernel = (LIGHT + "import os,subprocess,sys,time\n"
              "from perfkit.core import children\n"
              "class E:\n"
              "    def stop(self): pass\n"
              "e = E(); e.proc = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
              "e.process_group = e.proc.pid\n"
              "children.register(e)\n"
              "children.start_lifeline(0.05)\n"
              "print(os.getpid(), e.proc.pid, flush=True)\n"
              "time.sleep(60)\n")
    middle = ("import subprocess,sys,time\n"
              f"k = subprocess.Popen([sys.executable, '-c', {kernel!r}], stdout=sys.stdout, start_new_session=True)\n"
              "print(__import__('os').getpid(), flush=True)\n"
              "time.sleep(60)\n")
    owner = (LIGHT + "import os,subprocess,sys,time\n"
             "from perfkit.core import children\n"
             f"env = {{**os.environ, **children.owner_env(__import__('pathlib').Path({str(tmp_path)!r})), 'T': {tag!r}}}\n"
             f"m = subprocess.Popen([sys.executable, '-c', {middle!r}], stdout=sys.stdout, env=env,\n"
             f"                     start_new_session=True, preexec_fn=children.die_with_parent() if {kill == 'owner'!r} else None)\n"
             "time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", owner], stdout=subprocess.PIPE, text=True)
    middle_pid = int(p.stdout.readline())
    kernel_pid, engine_pid = map(int, p.stdout.readline().split())
    return p, [middle_pid, kernel_pid, engine_pid]


def _alive(pid: int) -> bool:
    return children.start_time(pid) is not None


@pytest.mark.parametrize("kill", ["owner", "middle"])
def test_kill_9_takes_down_papermill_the_kernel_and_its_engine(tmp_path, kill):
    """SIGKILL of perfkit: papermill dies of PDEATHSIG, the kernel's lifeline sees its owner (or its
    parent) gone and kills its engine's process group, then itself. Killing papermill alone does too."""
    owner, (middle, kernel, eng) = _spawn_chain(tmp_path, uuid.uuid4().hex, kill)
    try:
        assert all(map(_alive, (middle, kernel, eng)))
        os.kill(owner.pid if kill == "owner" else middle, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(map(_alive, (middle, kernel, eng))):
            time.sleep(0.05)
        assert not [p for p in (middle, kernel, eng) if _alive(p)]
    finally:
        for pid in (owner.pid, middle, kernel, eng):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        owner.wait()


def test_papermill_is_started_to_die_with_perfkit(tmp_path, monkeypatch):
    """report.execute arms PDEATHSIG for papermill and hands the kernel its owner and run directory."""
    seen = {}

    class P:
        pid = 0

        def wait(self, timeout=None):
            return 0

    def popen(cmd, **kw):
        seen.update(kw)
        return P()

    monkeypatch.setattr(publish.subprocess, "Popen", popen)
    publish.execute("cold_start", tmp_path / "p.yaml", tmp_path)
    assert callable(seen["preexec_fn"]) and seen["start_new_session"]
    assert seen["env"][children.ENV_OWNER].startswith(f"{os.getpid()}:")
    assert seen["env"][children.ENV_RUN_DIR] == str(tmp_path.resolve())


# ---- 2. a torn last line is repaired before appending, and reported when read ----------------------

def test_torn_line_is_moved_aside_before_the_next_append(tmp_path):
    log = JsonlLog(tmp_path / "trials.jsonl")
    log.append({"trial_id": "a"})
    with open(log.path, "a") as f:
        f.write('{"trial_id": "b", "ttf')  # a kill mid-write
    rows, damage = log.scan()
    assert [r["trial_id"] for r in rows] == ["a"] and "the last line (line 2) is torn" in damage[0]
    log.append({"trial_id": "b"})  # the re-measured trial
    assert log.path.read_text() == '{"trial_id": "a"}\n{"trial_id": "b"}\n'
    moved = json.loads((tmp_path / "trials.jsonl.torn").read_text())
    assert moved["fragment"] == '{"trial_id": "b", "ttf' and moved["offset"] == len('{"trial_id": "a"}\n')
    assert log.scan()[1] == []


def test_a_whole_row_without_its_newline_is_kept(tmp_path):
    log = JsonlLog(tmp_path / "trials.jsonl")
    log.path.write_text('{"trial_id": "a"}\n{"trial_id": "b"}')
    assert RunStore(tmp_path).done_ids() == {"a", "b"}
    log.extend([{"trial_id": "c"}])
    assert [r["trial_id"] for r in log.read()] == ["a", "b", "c"] and not log.torn_path.exists()


def test_resume_after_a_torn_line_measures_the_trial_once_and_completely(tmp_path, fake_ollama):
    from perfkit.kinds.ollama import OllamaBackend
    from perfkit.measure.runner import Runner, plan

    store = RunStore(tmp_path)
    b = OllamaBackend(fake_ollama.url)
    trials = plan(["good"], 3, prefix="p", warmup=0, cache_state="warm")
    Runner(b, store, progress=False).run(trials[:2])
    before = store.trials_log.path.read_bytes()
    with open(store.trials_log.path, "a") as f:
        f.write('{"trial_id": "p/good/rep2", "e2e')
    df = Runner(b, RunStore(tmp_path), progress=False).run(trials)
    b.close()
    assert len(df) == 3 and df["ok"].all()
    after = store.trials_log.path.read_bytes()
    assert after.startswith(before)
    rows, damage = store.trials_log.scan()
    assert [r["trial_id"] for r in rows] == [t.trial_id for t in trials] and damage == []


def test_unreadable_middle_line_is_reported(tmp_path):
    (tmp_path / "trials.jsonl").write_text('{"trial_id": "a"}\nGARBAGE\n{"trial_id": "c"}\n')
    log = JsonlLog(tmp_path / "trials.jsonl")
    assert len(log.read()) == 2 and "line 2: not a JSON object" in log.damage[0]


# ---- 3. two runs started in the same second get two run directories --------------------------------

def test_runs_started_in_the_same_second_never_share_a_directory(tmp_path, fake_ollama, fake_study, monkeypatch):
    class Frozen(rundir.datetime):
        @classmethod
        def now(cls, tz=None):
            return rundir.datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz)

    monkeypatch.setattr(rundir, "datetime", Frozen)
    p = params_file(tmp_path, fake_ollama.url)
    results = tmp_path / "res"
    assert main(["run", str(p), "--results", str(results)]) == 0
    assert main(["run", str(p), "--results", str(results)]) == 0
    dirs = sorted(d for d in results.iterdir() if (d / "run.json").exists() or d.name.startswith("2"))
    assert len(dirs) == 2 and all(d.name.startswith("20260102-030405-rel-") for d in dirs)
    for d in dirs:
        ids = [r["trial_id"] for r in JsonlLog(d / "cold_start" / "trials.jsonl").read()]
        assert ids == ["t0", "t1", "t2"]


def test_run_directories_are_created_exclusively(tmp_path, monkeypatch):
    names = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(rundir.secrets, "token_hex", lambda n: next(names))
    a = rundir.new_run_dir(tmp_path, "x")
    b = rundir.new_run_dir(tmp_path, "x")
    assert a != b and b.name.endswith("-bbbbbb")
    got = []
    threads = [threading.Thread(target=lambda: got.append(rundir.new_run_dir(tmp_path / "many", "x")))
               for _ in range(20)]
    (tmp_path / "many").mkdir()
    monkeypatch.undo()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 20


# ---- 4. a name is a safe path component -------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../../x", "a/b", ".hidden", "x" * 65, "'with space'", "'..'"])
def test_unsafe_names_are_refused(tmp_path, name, capsys):
    p = params_file(tmp_path, "http://127.0.0.1:9", name=name)
    with pytest.raises(ConfigError, match=r"p.yaml: name: .*letters, digits, '-', '_' and '\.'.*at most 64"):
        from perfkit.studies import params

        params.load(p)
    assert main(["run", str(p), "--results", str(tmp_path / "sub" / "res")]) == 2
    assert "name:" in capsys.readouterr().err
    assert not (tmp_path / "sub").exists() and not (tmp_path / "x").exists()


# ---- 5. damaged data is named, refused unless allowed, and shown in the report ---------------------

def _damaged_run(tmp_path: Path, fake_ollama) -> Path:
    run_dir = tmp_path / "res" / "20260101-000000-rel-abcdef"
    (run_dir / "cold_start").mkdir(parents=True)
    params_file(tmp_path, fake_ollama.url)
    rundir.write_params_copy(tmp_path / "p.yaml", run_dir)
    (run_dir / "run.json").write_text(json.dumps({"run_id": run_dir.name, "studies": {"cold_start": {"status": "done"}}}))
    (run_dir / "cold_start" / "trials.jsonl").write_text(
        '{"trial_id": "t0", "ok": true}\n{"trial_id": "t1", "o\n{"trial_id": "t2", "ok": true}\n')
    return run_dir


def test_report_refuses_damaged_data_and_names_it(tmp_path, fake_ollama, fake_study, capsys):
    run_dir = _damaged_run(tmp_path, fake_ollama)
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "cold_start/trials.jsonl line 2: not a JSON object" in err
    assert "cold_start/manifest.json is missing" in err and "--allow-damaged" in err
    assert fake_study["calls"] == [] and not (run_dir / "cold_start.html").exists()


def test_report_with_allow_damaged_renders_a_visible_warning(tmp_path, fake_ollama, fake_study, monkeypatch, capsys):
    monkeypatch.undo()  # the real render: the warning must be in the HTML
    fake = fake_study

    def execute(study, params_path, run_dir, *, measure=True, env=None, tick=None):
        fake["calls"].append(study)
        return write_notebook(Path(run_dir) / "notebooks" / f"{study}.ipynb", "# Cold start")

    monkeypatch.setattr(report, "execute", execute)
    run_dir = _damaged_run(tmp_path, fake_ollama)
    assert main(["report", str(run_dir), "--allow-damaged"]) == 0
    assert "warning: damaged data: cold_start/trials.jsonl line 2" in capsys.readouterr().err
    page = (run_dir / "cold_start.html").read_text()
    assert "Damaged data" in page and "line 2: not a JSON object" in page and "manifest.json is missing" in page


# ---- 6. resume with other parameters is refused; --retry-failed measures failures again -------------

def test_resume_with_another_parameter_file_is_refused(tmp_path, fake_ollama, fake_study, capsys):
    p = params_file(tmp_path, fake_ollama.url)
    assert main(["run", str(p), "--results", str(tmp_path / "res")]) == 0
    run_dir = the_run(tmp_path / "res")
    other = params_file(tmp_path, fake_ollama.url, fname="other.yaml", extra="    num_predict: 99\n")
    calls = len(fake_study["calls"])
    assert main(["run", str(other), "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "other.yaml is not the parameter file this run was started with" in err
    assert str(run_dir / "params.yaml") in err and "studies.cold_start.num_predict" in err
    assert len(fake_study["calls"]) == calls
    same = params_file(tmp_path, fake_ollama.url, fname="copy.yaml")  # same content, another file: fine
    assert main(["run", str(same), "--resume", str(run_dir)]) == 0
    assert main(["run", str(run_dir / "params.yaml"), "--resume", str(run_dir)]) == 0  # the run's own copy


def test_retry_failed_measures_failed_trials_again_and_keeps_the_failed_rows(tmp_path, fake_ollama, fake_study):
    fake_study["fail_once"] = {"t1"}
    p = params_file(tmp_path, fake_ollama.url)
    assert main(["run", str(p), "--results", str(tmp_path / "res")]) == 0
    run_dir = the_run(tmp_path / "res")
    store = RunStore(run_dir / "cold_start")
    assert main(["run", str(p), "--resume", str(run_dir)]) == 0  # a plain resume never retries
    assert fake_study["attempts"] == {"t0": 1, "t1": 1, "t2": 1}
    assert main(["run", str(p), "--resume", str(run_dir), "--retry-failed"]) == 0
    assert fake_study["calls"][-1]["env"] == {"PERFKIT_RETRY_FAILED": "1", "PERFKIT_REPLICATE": "1"}
    assert fake_study["attempts"] == {"t0": 1, "t1": 2, "t2": 1}
    every = store.trials(all_attempts=True)
    assert list(every["trial_id"]) == ["t0", "t1", "t2", "t1"] and list(every["ok"]) == [True, False, True, True]
    latest = store.trials()
    assert sorted(latest["trial_id"]) == ["t0", "t1", "t2"] and latest["ok"].all()
    assert store.done_ids(retry_failed=True) == {"t0", "t1", "t2"}


def test_retry_failed_needs_resume(capsys):
    assert main(["run", "params/smoke.yaml", "--retry-failed"]) == 2
    assert "--retry-failed needs --resume" in capsys.readouterr().err


# ---- 8. no tracebacks for bad paths -------------------------------------------------------------------

def test_bad_paths_are_clear_errors(tmp_path, fake_ollama, capsys):
    cases = []
    cases.append((["run", str(tmp_path)], "is a directory, not a parameter file"))
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    cases.append((["run", str(binary)], "a binary file, not a YAML parameter file"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    p = params_file(tmp_path, fake_ollama.url)
    cases.append((["run", str(p), "--results", str(afile / "res")], f"{afile} is a file"))
    long = params_file(tmp_path, fake_ollama.url, name="n" * 300, fname="long.yaml")
    cases.append((["run", str(long), "--results", str(tmp_path / "r")], "long.yaml: name:"))
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "r").exists()


# ---- 9. the server is checked before any study starts ------------------------------------------------

class _Canned(BaseHTTPRequestHandler):
    status, ctype, body, need = 200, "text/html", b"<!doctype html><title>Login</title>", None

    def do_GET(self):
        if self.need and self.headers.get("Authorization") == self.need:
            self.send_response(200)
            body, ctype = b'{"version": "0.33.0"}', "application/json"
        else:
            self.send_response(self.status)
            body, ctype = self.body, self.ctype
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def canned():
    servers = []

    def make(**attrs):
        h = type("H", (_Canned,), attrs)
        s = ThreadingHTTPServer(("127.0.0.1", 0), h)
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(s)
        return f"http://127.0.0.1:{s.server_address[1]}"

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind,server,msg", [
    ("nothing", {}, "nothing listening there"),
    ("html", {}, "this URL answers HTML (a web page, HTTP 200 OK), not the Ollama API"),
    ("401", {"status": 401, "ctype": "application/json", "body": b'{"error":"unauthorized"}', "need": "Bearer right"},
     "HTTP 401 Unauthorized: check backend.headers"),
    ("json", {"ctype": "application/json", "body": b'{"hello": 1}'}, "answered JSON without a 'version'"),
])
def test_unreachable_or_wrong_server_is_named_before_any_study(tmp_path, canned, fake_study, kind, server, msg, capsys):
    url = f"http://127.0.0.1:{_free_port()}" if kind == "nothing" else canned(**server)
    p = params_file(tmp_path, url, headers={"Authorization": "Bearer " + SECRET})
    assert main(["run", str(p), "--results", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err
    assert f"p.yaml: backend.url {url}: " in err and msg in err and SECRET not in err
    assert fake_study["calls"] == [] and not (tmp_path / "res").exists()


def test_the_check_sends_the_configured_headers(tmp_path, canned, fake_study, capsys):
    url = canned(status=401, ctype="application/json", body=b"{}", need="Bearer right")
    assert main(["run", str(params_file(tmp_path, url, headers={"Authorization": "Bearer right"})),
                 "--results", str(tmp_path / "res")]) == 0
    assert "backend: ollama 0.33.0 at" in capsys.readouterr().out


def test_llama_server_kind_against_an_ollama(tmp_path, fake_ollama, fake_study, capsys):
    p = tmp_path / "p.yaml"
    p.write_text(f"name: x\nbackend: {{kind: llama-server, url: '{fake_ollama.url}'}}\n"
                 "studies:\n  cold_start: {model: good, states: [warm]}\n")
    assert main(["run", str(p), "--results", str(tmp_path / "res")]) == 2
    assert "GET /health answered HTTP 404 Not Found: not a llama-server" in capsys.readouterr().err


# ---- 10. signals and a server that dies mid-stream ----------------------------------------------------

def test_sigterm_exits_143(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)  # accepts, never answers: perfkit waits in the server check
    try:
        p = params_file(tmp_path, f"http://127.0.0.1:{srv.getsockname()[1]}")
        proc = subprocess.Popen([sys.executable, "-m", "perfkit", "run", str(p), "--results", str(tmp_path / "r")],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait until it connects
            try:
                srv.settimeout(0.1)
                conn, _ = srv.accept()
                break
            except socket.timeout:
                continue
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 143, err
        assert "stopped by SIGTERM" in err and "Traceback" not in err
        conn.close()
    finally:
        srv.close()


def _one_shot_server(payload: bytes) -> tuple[str, socket.socket]:
    """Answers one request with ``payload`` and then drops the connection."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve():
        for _ in range(4):
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(payload)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}", srv


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@pytest.mark.parametrize("payload", [
    # the model process died: the chunked body stops mid-chunk (incomplete chunked read)
    HEAD + _chunk(b'{"model":"m","done":false,"message":{"role":"assistant","content":"a"}}\n') + b"40\r\n{\"mod",
    # the server ends the response cleanly, but inside a line
    HEAD + _chunk(b'{"model":"m","done":false,"message":{"role":"assistant","content":"a"}}\n')
    + _chunk(b'{"model":"m","done":false,"mess') + b"0\r\n\r\n",
], ids=["incomplete-chunked-read", "ends-inside-a-line"])
def test_a_server_dying_mid_stream_is_a_lost_connection_not_a_malformed_line(payload):
    from perfkit.kinds.ollama import OllamaBackend

    url, srv = _one_shot_server(payload)
    try:
        b = OllamaBackend(url)
        rec = b.generate("m", "hello")
        b.close()
    finally:
        srv.close()
    assert not rec.ok and rec.error.startswith("server connection lost"), rec.error


# ---- 11. no secret under the run directory ---------------------------------------------------------------

def _grep(run_dir: Path, *needles: str) -> list[str]:
    return [f"{f}: {n}" for f in run_dir.rglob("*") if f.is_file() for n in needles
            if n.encode() in f.read_bytes()]


def test_no_secret_is_written_and_resume_takes_it_from_the_given_file(tmp_path, fake_ollama, fake_study, capsys):
    headers = {"Authorization": "Bearer " + SECRET, "X-Api-Key": "k3y-" + SECRET}
    p = params_file(tmp_path, fake_ollama.url, headers=headers)
    assert main(["run", str(p), "--results", str(tmp_path / "res")]) == 0
    run_dir = the_run(tmp_path / "res")
    assert _grep(run_dir, SECRET) == []
    kept = (run_dir / "params.yaml").read_text()
    assert "Authorization: '***'" in kept and "X-Api-Key: '***'" in kept
    from perfkit.studies import params

    assert params.load(run_dir / "params.yaml").backend.headers == {"Authorization": "***", "X-Api-Key": "***"}
    assert fake_study["calls"][0]["params_path"] == p.resolve()  # measured with the real headers
    assert main(["run", str(p), "--resume", str(run_dir)]) == 0
    assert fake_study["calls"][-1]["params_path"] == p.resolve()
    assert main(["run", str(run_dir / "params.yaml"), "--resume", str(run_dir)]) == 2
    assert "has its secret values redacted (backend.headers.Authorization, backend.headers.X-Api-Key)" in \
        capsys.readouterr().err
    other = params_file(tmp_path, fake_ollama.url, headers={"Authorization": "Bearer other"}, fname="o.yaml")
    assert main(["run", str(other), "--resume", str(run_dir)]) == 2  # header names differ: another file
    assert _grep(run_dir, SECRET) == []


# ---- with the real engine: kill -9 of a measuring run, resume at once; a model process dying -------------

KILL_PARAMS = """name: killtest
backend:
  kind: embedded
  settings: {num_thread: 2}
timeouts: {request_s: 60, stall_s: 30}
sampling: {interval_s: 0.1}
seed: 1
studies:
  cold_start:
    model: smollm2-135m-q4_1
    states: [warm]
    reps: 5
    num_predict: 4
    prompt_words: 8
    strategies: [none]
    strategy_reps: 1
    keep_alive_s: 30
    idle_gaps_s: [0.2]
"""


def tagged(tag: str) -> dict[int, str]:
    """Live processes carrying ``PERFKIT_TEST_TAG=<tag>`` in their environment: the run's whole tree."""
    want = f"PERFKIT_TEST_TAG={tag}".encode()
    out = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if want in (d / "environ").read_bytes().split(b"\0") and children.start_time(int(d.name)):
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return out


def _kill_tagged(tag: str) -> None:
    for pid in tagged(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.engine
def test_kill_9_leaves_nothing_running_and_an_immediate_resume_keeps_every_line(tmp_path, store_dir):
    p = tmp_path / "kill.yaml"
    p.write_text(KILL_PARAMS)
    results = tmp_path / "res"
    tag, tag2 = uuid.uuid4().hex, uuid.uuid4().hex
    run = subprocess.Popen([sys.executable, "-m", "perfkit", "run", str(p), "--results", str(results)], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PERFKIT_TEST_TAG": tag})
    resume = None
    try:
        deadline = time.monotonic() + 90
        trials = None
        while time.monotonic() < deadline and run.poll() is None:
            found = list(results.glob("*/cold_start/trials.jsonl"))
            if found and found[0].read_bytes().count(b"\n") >= 2:
                trials = found[0]
                break
            time.sleep(0.05)
        assert trials is not None, "no trial recorded"
        tree = tagged(tag)
        kinds = {k for k in ("papermill", "ipykernel_launcher", "llama-server") if any(k in c for c in tree.values())}
        assert kinds == {"papermill", "ipykernel_launcher", "llama-server"}, tree
        run.kill()  # SIGKILL: no clean-up code of perfkit runs
        run.wait()
        before = trials.read_bytes()
        complete = before[:before.rfind(b"\n") + 1]
        run_dir = trials.parent.parent
        # resume at once: it must wait for the dead run's tree, never measure beside it
        resume = subprocess.Popen([sys.executable, "-m", "perfkit", "run", str(p), "--resume", str(run_dir)],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, "PERFKIT_TEST_TAG": tag2})
        gone_by = time.monotonic() + 5
        while time.monotonic() < gone_by and tagged(tag):
            time.sleep(0.05)
        assert not tagged(tag), f"still alive 5 s after kill -9: {tagged(tag)}"
        out, _ = resume.communicate(timeout=150)
        assert resume.returncode == 0, out[-3000:]
        assert "stale lock of pid" in out and "taking the run over" in out
        after = trials.read_bytes()
        assert after.startswith(complete)  # every completed trial line kept byte for byte
        ids = [json.loads(x)["trial_id"] for x in after.splitlines()]
        assert len(ids) == len(set(ids))  # none measured twice
        done_before = {json.loads(x)["trial_id"] for x in complete.splitlines()}
        assert done_before < set(ids)
        assert rundir.read_run(run_dir)["studies"]["cold_start"]["status"] == "done"
        assert not tagged(tag2)
    finally:
        for proc in (run, resume):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        _kill_tagged(tag)
        _kill_tagged(tag2)


@pytest.mark.engine
def test_a_model_process_dying_mid_stream_is_a_lost_connection(engine):
    import psutil

    from perfkit.kinds.llamacpp import LlamaServerBackend
    from perfkit.client.backends import Sampling

    b = LlamaServerBackend.from_engine(engine)
    model = "smollm2-135m-q4_1"
    b.load(model)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("rec", b.generate(model, "Tell me a long story about a cat",
                                                                        Sampling(num_predict=3000))))
    t.start()
    try:
        deadline = time.monotonic() + 30
        kids = []
        while time.monotonic() < deadline and not kids:
            kids = psutil.Process(engine.proc.pid).children()
            time.sleep(0.05)
        time.sleep(1.0)  # tokens are streaming
        for k in kids:
            k.kill()
        t.join(60)
    finally:
        b.close()
    rec = got["rec"]
    assert not rec.ok and rec.error.startswith("server connection lost"), rec.error
    assert "malformed" not in rec.error


def test_a_password_in_the_url_is_a_secret_too(tmp_path, fake_ollama, fake_study, capsys):
    url = fake_ollama.url.replace("http://", f"http://perfkit:{SECRET}@")
    p = params_file(tmp_path, url)
    assert main(["run", str(p), "--results", str(tmp_path / "res")]) == 0
    run_dir = the_run(tmp_path / "res")
    out = capsys.readouterr()
    assert _grep(run_dir, SECRET) == [] and SECRET not in out.out + out.err
    assert "url: http://***@127.0.0.1:" in (run_dir / "params.yaml").read_text()
    assert fake_study["calls"][0]["params_path"] == p.resolve()  # measured with the real URL


def test_compare_warns_about_a_run_compared_with_itself(tmp_path):
    from test_compare import make_run

    from perfkit import compare

    a = make_run(tmp_path, "a")
    c = compare.compare(a, a)
    assert any("A and B are the same run" in w for w in c.warnings) and "same run" in c.summary()


@pytest.mark.engine
def test_every_request_failing_ends_in_reports_that_say_so(tmp_path):
    """timeouts.request_s far below any answer: every request (and the warmups) fail; each study still ends in a
    report whose answer says the run can't answer its question, and why, by class."""
    import yaml
    from conftest import perfkit_run
    from test_production_run import text

    p = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    p["timeouts"] = {"request_s": 0.001, "stall_s": 60}
    p["studies"] = {k: p["studies"][k] for k in ("cold_start", "config_tuning")}
    run_dir = perfkit_run(p, tmp_path, timeout_s=600)
    for study in ("cold_start", "config_tuning"):
        page = text(run_dir / f"{study}.html")
        assert "This run can't answer the question" in page and "failed" in page, study
        assert "Traceback" not in page and "KeyError" not in page
