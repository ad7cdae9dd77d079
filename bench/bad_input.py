"""Battery: bad input to `perfkit` — parameter files and command-line arguments — and what it does.

Each case runs ``python -m perfkit ...`` in a fresh directory and records its exit code, whether a
Python traceback appeared, and whether work started (a run directory created, or papermill started
in a given run directory). A case ends as one of:

* ``clear``: a non-zero exit with a message, no traceback, nothing started (the goal for every case);
* ``traceback``: a traceback was printed;
* ``silent``: accepted (exit 0) or work started before the problem was reported.

Servers for the URL cases are local: the fake Ollama of the tests, a web page, an auth proxy that
answers 401, a port with nothing listening. A valid control run (not counted) shows that an
accepted file is detected as such.

    .venv/bin/python bench/bad_input.py [-j 2] [-k SUBSTRING] [--no-control]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

DEL = object()


@dataclass
class Case:
    id: str
    what: str
    argv: Callable[["Ctx"], list[str]]  # perfkit arguments; may prepare files in ctx.dir
    watch: Callable[["Ctx"], Path | None] = lambda ctx: None  # a run dir given to perfkit, watched for new work
    stdin: Callable[["Ctx"], str] | None = None  # text piped to perfkit


@dataclass
class Ctx:
    dir: Path
    urls: dict[str, str]
    held: list = field(default_factory=list)

    @property
    def results(self) -> Path:
        return self.dir / "res"


# ---- servers ---------------------------------------------------------------------------------------

def _canned(status: int, ctype: str, body: bytes) -> ThreadingHTTPServer:
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    s = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return s


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- parameter files -----------------------------------------------------------------------------

def base(url: str) -> dict:
    return {"name": "bad", "backend": {"kind": "ollama", "url": url},
            "timeouts": {"request_s": 10}, "sampling": {"interval_s": 0.2, "gpu": False},
            "studies": {"cold_start": {"model": "good", "states": ["warm"], "reps": 2, "strategies": ["none"],
                                       "strategy_reps": 1, "idle_gaps_s": [0.1]}}}


def params(ctx: Ctx, text: str | None = None, **changes) -> str:
    """Write a parameter file: the valid base with ``changes`` (dotted keys; DEL removes), or raw text."""
    p = ctx.dir / "p.yaml"
    if text is None:
        d = base(ctx.urls["ollama"])
        for key, value in changes.items():
            *parents, last = key.split("__")
            node = d
            for k in parents:
                node = node.setdefault(k, {})
            if value is DEL:
                node.pop(last, None)
            else:
                node[last] = value
        text = yaml.safe_dump(d, sort_keys=False)
    p.write_text(text)
    return str(p)


def p_args(**changes) -> Callable[[Ctx], list[str]]:
    return lambda ctx: ["run", params(ctx, **changes), "--results", str(ctx.results)]


def raw_args(text: str) -> Callable[[Ctx], list[str]]:
    return lambda ctx: ["run", params(ctx, text), "--results", str(ctx.results)]


def url_args(which: str) -> Callable[[Ctx], list[str]]:
    return lambda ctx: ["run", params(ctx, backend__url=ctx.urls[which]), "--results", str(ctx.results)]


def made_run(ctx: Ctx, *, manifest: bool = True, corrupt: bool = False, headers: dict | None = None) -> Path:
    """A finished-looking run directory made by hand (params copy, run.json, one study's data)."""
    from perfkit.run import rundir as report

    run_dir = ctx.results / "20260101-000000-bad-000000"
    (run_dir / "cold_start").mkdir(parents=True, exist_ok=True)
    src = Path(params(ctx, **({"backend__headers": headers} if headers else {})))
    report.write_params_copy(src, run_dir)
    (run_dir / "run.json").write_text(json.dumps({"run_id": run_dir.name, "params_file": str(src),
                                                  "studies": {"cold_start": {"status": "done"}}}))
    lines = ['{"trial_id": "state/warm/rep0", "ok": true}', '{"trial_id": "state/warm/rep1", "ok": true}']
    if corrupt:
        lines.insert(1, '{"trial_id": "state/warm/rep9", "e2')
    (run_dir / "cold_start" / "trials.jsonl").write_text("\n".join(lines) + "\n")
    if manifest:
        (run_dir / "cold_start" / "manifest.json").write_text("{}")
    return run_dir


def resume_other(ctx: Ctx) -> list[str]:
    run_dir = made_run(ctx)
    other = ctx.dir / "other.yaml"
    d = base(ctx.urls["ollama"])
    d["studies"]["cold_start"]["reps"] = 7
    other.write_text(yaml.safe_dump(d))
    return ["run", str(other), "--resume", str(run_dir)]


def resume_redacted(ctx: Ctx) -> list[str]:
    run_dir = made_run(ctx, headers={"Authorization": "Bearer xyz"})
    return ["run", str(run_dir / "params.yaml"), "--resume", str(run_dir)]


def resume_locked(ctx: Ctx) -> list[str]:
    from perfkit.run.lock import RunLock

    run_dir = made_run(ctx)
    ctx.held.append(RunLock(run_dir, "bad_input.py (holding the run)", log=lambda m: None).acquire())
    return ["run", params(ctx), "--resume", str(run_dir)]


def resume_bad_runjson(ctx: Ctx) -> list[str]:
    run_dir = made_run(ctx)
    (run_dir / "run.json").write_text("{not json")
    return ["run", params(ctx), "--resume", str(run_dir)]


def results_under_file(ctx: Ctx) -> list[str]:
    (ctx.dir / "afile").write_text("x")
    return ["run", params(ctx), "--results", str(ctx.dir / "afile" / "res")]


def results_is_file(ctx: Ctx) -> list[str]:
    (ctx.dir / "afile").write_text("x")
    return ["run", params(ctx), "--results", str(ctx.dir / "afile")]


def binary_file(ctx: Ctx) -> list[str]:
    (ctx.dir / "b.yaml").write_bytes(bytes(range(256)) * 8)
    return ["run", str(ctx.dir / "b.yaml"), "--results", str(ctx.results)]


def latin1_file(ctx: Ctx) -> list[str]:
    (ctx.dir / "l.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    return ["run", str(ctx.dir / "l.yaml"), "--results", str(ctx.results)]


def huge_file(ctx: Ctx) -> list[str]:
    (ctx.dir / "h.yaml").write_text("# " + "x" * (2 << 20) + "\n")
    return ["run", str(ctx.dir / "h.yaml"), "--results", str(ctx.results)]


def _run_watch(ctx: Ctx) -> Path:
    return ctx.results / "20260101-000000-bad-000000"


BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)) + "name: bomb\n"
DEEP = "name: deep\nstudies: " + "[" * 5000 + "]" * 5000 + "\n"


def compare_bad_manifest(ctx: Ctx) -> list[str]:
    good = made_run(ctx)
    bad = ctx.results / "20260102-000000-bad-111111"
    import shutil

    shutil.copytree(good, bad)
    (bad / "cold_start" / "manifest.json").write_text('{"host": [1, 2], "backend": "x"}')
    return ["compare", str(good), str(bad)]


def fleet_args(**fleet) -> Callable[[Ctx], list[str]]:
    def make(ctx: Ctx) -> list[str]:
        section = {"model": "good", "api": "ollama", "proxy_url": ctx.urls["ollama"], "server_urls": [ctx.urls["ollama"]],
                   **fleet}
        return ["run", params(ctx, studies={"fleet": section}), "--results", str(ctx.results)]
    return make


def embedded_unknown_model(ctx: Ctx) -> list[str]:
    return ["run", params(ctx, backend={"kind": "embedded"}, studies={"cold_start": {"model": "no-such-model"}}),
            "--results", str(ctx.results)]


CS = "studies__cold_start__"
CASES: list[Case] = [
    # --- the parameter file itself
    Case("missing-file", "parameter file does not exist", lambda c: ["run", str(c.dir / "nope.yaml")]),
    Case("directory", "parameter path is a directory", lambda c: ["run", str(c.dir), "--results", str(c.results)]),
    Case("binary", "parameter file is binary", binary_file),
    Case("latin-1", "parameter file is not UTF-8", latin1_file),
    Case("huge", "a 2 MB parameter file", huge_file),
    Case("empty", "empty parameter file", raw_args("")),
    Case("not-yaml", "invalid YAML", raw_args("name: [unclosed\n")),
    Case("top-list", "a list at the top level", raw_args("- a\n- b\n")),
    Case("dup-key", "a key given twice (YAML keeps the last silently)", raw_args("name: a\nname: b\nstudies: {}\n")),
    # --- name
    Case("name-traversal", "name: ../../../x", p_args(name="../../../x")),
    Case("name-slash", "name with a slash", p_args(name="a/b")),
    Case("name-300", "a 300-character name", p_args(name="n" * 300)),
    Case("name-empty", "empty name", p_args(name="")),
    Case("name-dotdot", "name: '..'", p_args(name="..")),
    Case("name-missing", "no name", p_args(name=DEL)),
    # --- structure
    Case("unknown-key", "unknown top-level key", p_args(studiez={})),
    Case("unknown-study-key", "unknown key in a study", p_args(**{CS + "repz": 3})),
    Case("no-studies-key", "no studies key", p_args(studies=DEL)),
    Case("studies-empty", "studies: {} (no study enabled)", p_args(studies={})),
    # --- numbers
    Case("reps-0", "reps: 0", p_args(**{CS + "reps": 0})),
    Case("reps-negative", "reps: -3", p_args(**{CS + "reps": -3})),
    Case("reps-1e9", "reps: 1e9", p_args(**{CS + "reps": 1e9})),
    Case("reps-bool", "reps: yes (YAML true)", p_args(**{CS + "reps": True})),
    Case("reps-text", "reps: many", p_args(**{CS + "reps": "many"})),
    Case("num-predict-huge", "num_predict: 10 million", p_args(**{CS + "num_predict": 10_000_000})),
    Case("prompt-words-1", "prompt_words: 1", p_args(**{CS + "prompt_words": 1})),
    Case("request-timeout-0", "timeouts.request_s: 0", p_args(timeouts={"request_s": 0})),
    Case("interval-negative", "sampling.interval_s: -1", p_args(sampling={"interval_s": -1})),
    # --- lists
    Case("idle-gaps-negative", "idle_gaps_s: [-1]", p_args(**{CS + "idle_gaps_s": [-1]})),
    Case("idle-gaps-empty", "idle_gaps_s: []", p_args(**{CS + "idle_gaps_s": []})),
    Case("states-empty", "states: []", p_args(**{CS + "states": []})),
    Case("states-dup", "states: [warm, warm]", p_args(**{CS + "states": ["warm", "warm"]})),
    Case("states-unknown", "states: [cold]", p_args(**{CS + "states": ["cold"]})),
    Case("strategy-unknown", "strategies: [prewarm]", p_args(**{CS + "strategies": ["prewarm"]})),
    Case("models-dup", "model_size models: [a, a]", p_args(studies={"model_size": {"models": ["good", "good"]}})),
    Case("models-one", "model_size with one model", p_args(studies={"model_size": {"models": ["good"]}})),
    Case("quant-reference", "quantization reference not among models",
         p_args(studies={"quantization": {"models": ["a", "b"], "reference": "c"}})),
    Case("concurrency-0", "concurrency: [0]", p_args(studies={"config_tuning": {"model": "good", "settings": [{}],
                                                                                  "concurrency": [0]}})),
    Case("concurrency-huge", "concurrency: [100000]",
         p_args(studies={"config_tuning": {"model": "good", "settings": [{}], "concurrency": [100000]}})),
    Case("requests-huge", "requests: 1000000",
         p_args(studies={"config_tuning": {"model": "good", "settings": [{}], "requests": 1_000_000}})),
    Case("settings-empty", "config_tuning settings: []",
         p_args(studies={"config_tuning": {"model": "good", "settings": []}})),
    Case("setting-bad-value", "OLLAMA_KV_CACHE_TYPE: q5",
         p_args(studies={"config_tuning": {"model": "good", "settings": [{"OLLAMA_KV_CACHE_TYPE": "q5"}]}})),
    Case("setting-unknown", "backend setting OLLAMA_NUM_PARALEL", p_args(backend__settings={"OLLAMA_NUM_PARALEL": 2})),
    # --- backend
    Case("kind-unknown", "backend.kind: vllm", p_args(backend__kind="vllm")),
    Case("ollama-no-url", "kind ollama without a url", p_args(backend__url=DEL)),
    Case("url-no-scheme", "url: localhost:11434", p_args(backend__url="localhost:11434")),
    Case("url-ftp", "url: ftp://host", p_args(backend__url="ftp://127.0.0.1:21")),
    Case("url-bad-port", "url with port 99999", p_args(backend__url="http://127.0.0.1:99999")),
    Case("url-embedded", "a url with kind embedded", p_args(backend={"kind": "embedded", "url": "http://h:1"})),
    Case("headers-not-strings", "headers: {X: 1}", p_args(backend__headers={"X": 1})),
    Case("url-nothing-listening", "nothing listens at the url", url_args("closed")),
    Case("url-html", "the url answers a web page", url_args("html")),
    Case("url-401", "the url answers HTTP 401", url_args("401")),
    Case("url-not-ollama-json", "the url answers JSON that is not Ollama's", url_args("json")),
    Case("url-llama-server-kind", "kind llama-server pointed at an Ollama",
         lambda c: ["run", params(c, backend={"kind": "llama-server", "url": c.urls["ollama"]}),
                    "--results", str(c.results)]),
    Case("embedded-unknown-model", "a model the embedded store does not have", embedded_unknown_model),
    # --- command line
    Case("study-unknown", "--study speed", lambda c: ["run", params(c), "--study", "speed", "--results", str(c.results)]),
    Case("study-not-enabled", "--study model_size, not in the file",
         lambda c: ["run", params(c), "--study", "model_size", "--results", str(c.results)]),
    Case("results-under-file", "--results under a file", results_under_file),
    Case("results-is-file", "--results is a file", results_is_file),
    Case("resume-missing", "--resume a directory that does not exist",
         lambda c: ["run", params(c), "--resume", str(c.dir / "nope")]),
    Case("resume-not-run", "--resume a directory that is not a run", lambda c: ["run", params(c), "--resume", str(c.dir)]),
    Case("resume-file", "--resume a file", lambda c: ["run", params(c), "--resume", params(c)]),
    Case("resume-other-params", "--resume with another parameter file", resume_other, _run_watch),
    Case("resume-redacted-copy", "--resume with the run's redacted params.yaml (secrets needed)", resume_redacted,
         _run_watch),
    Case("resume-owned", "--resume a run a live process owns", resume_locked, _run_watch),
    Case("resume-bad-run-json", "--resume a run whose run.json is corrupt", resume_bad_runjson, _run_watch),
    Case("retry-without-resume", "--retry-failed without --resume",
         lambda c: ["run", params(c), "--retry-failed", "--results", str(c.results)]),
    Case("report-missing", "report on a directory that does not exist", lambda c: ["report", str(c.dir / "nope")]),
    Case("report-not-run", "report on a directory that is not a run", lambda c: ["report", str(c.dir)]),
    Case("report-corrupt-line", "report on a run with a corrupt trial line",
         lambda c: ["report", str(made_run(c, corrupt=True))], _run_watch),
    Case("report-no-manifest", "report on a run without its manifest",
         lambda c: ["report", str(made_run(c, manifest=False))], _run_watch),
    Case("engine-port", "engine start --port 99999", lambda c: ["engine", "start", "--port", "99999"]),
    Case("engine-set-unknown", "engine start --set BAD=1", lambda c: ["engine", "start", "--set", "BAD=1"]),
    Case("engine-set-no-equals", "engine start --set OLLAMA_NUM_PARALLEL", lambda c: ["engine", "start", "--set",
                                                                                     "OLLAMA_NUM_PARALLEL"]),
    Case("unknown-command", "perfkit frobnicate", lambda c: ["frobnicate"]),
    Case("models-missing-dir", "models --models-dir that does not exist",
         lambda c: ["models", "--models-dir", str(c.dir / "nope")]),
    # held out in issue 19: files and servers perfkit's tests had never seen
    Case("yaml-alias-bomb", "a 'billion laughs' YAML alias bomb", raw_args(BOMB)),
    Case("yaml-deep", "5000-deep nesting", raw_args(DEEP)),
    Case("timeout-inf", "timeouts.request_s: .inf", p_args(timeouts={"request_s": float("inf")})),
    Case("header-non-ascii", "a header value with a non-ASCII character", p_args(backend__headers={"X-Key": "clé"})),
    Case("model-not-on-server", "a model the server does not have", p_args(**{CS + "model": "nope"})),
    Case("restart-missing", "config tuning settings on an Ollama without restart_command",
         p_args(studies={"config_tuning": {"model": "good", "settings": [{}, {"OLLAMA_NUM_PARALLEL": 2}]}})),
    Case("restart-not-a-program", "restart_command names no program",
         p_args(backend__restart_command=["/nonexistent/restart-ollama"])),
    Case("server-log-missing", "server_log.file does not exist", p_args(backend__server_log={"file": "/nonexistent.log"})),
    Case("fleet-host-unresolvable", "a fleet server whose host does not resolve",
         fleet_args(server_urls=["http://no-such-host.invalid:11434"], weights=None)),
    Case("fleet-proxy-down", "a fleet whose proxy does not answer",
         lambda c: fleet_args(proxy_url=c.urls["closed"])(c)),
    Case("compare-bad-manifest", "compare with a malformed manifest", compare_bad_manifest),
]


MERGE = """\
name: merged
backend: {{kind: ollama, url: "{url}"}}
timeouts: {{request_s: 10}}
sampling: &s {{interval_s: 0.2, gpu: false}}
studies:
  cold_start:
    <<: {{states: [warm], reps: 2, strategies: [none], strategy_reps: 1, idle_gaps_s: [0.1]}}
    model: good
"""
# Valid inputs that must be accepted (not counted among the bad ones).
CONTROLS: list[Case] = [
    Case("control-valid", "a valid file", p_args()),
    Case("control-merge-keys", "YAML merge keys (<<: *defaults)",
         lambda c: ["run", params(c, MERGE.format(url=c.urls["ollama"])), "--results", str(c.results)]),
    Case("control-stdin", "parameters through a pipe (-)", lambda c: ["run", "-", "--results", str(c.results)],
         stdin=lambda c: yaml.safe_dump(base(c.urls["ollama"]))),
]


# ---- running ------------------------------------------------------------------------------------

def _snapshot(d: Path | None) -> set[str]:
    if d is None or not d.exists():
        return set()
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def run_case(case: Case, work: Path, urls: dict[str, str], timeout_s: float) -> dict:
    ctx = Ctx(work / case.id, urls)
    ctx.dir.mkdir(parents=True)
    try:
        argv = case.argv(ctx)
        watched = case.watch(ctx)
        before_results = {p.name for p in ctx.results.iterdir()} if ctx.results.exists() else set()
        before_watch = _snapshot(watched)
        env = {**os.environ, "PERFKIT_CACHE": str(ctx.dir / "cache")} if argv[:1] == ["engine"] else os.environ
        t0 = time.monotonic()
        feed = case.stdin(ctx) if case.stdin else None
        proc = subprocess.Popen([sys.executable, "-m", "perfkit", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True, env=env,
                                stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL)
        try:
            out, err = proc.communicate(feed, timeout=timeout_s)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            code = "timeout"
        secs = time.monotonic() - t0
    finally:
        for lock in ctx.held:
            lock.release()
    new_runs = ({p.name for p in ctx.results.iterdir() if (p / "run.json").exists() or p.name.startswith("2")} - before_results) if ctx.results.exists() else set()
    new_work = {p for p in _snapshot(watched) - before_watch if p.startswith(("notebooks", "logs/"))}
    text = out + err
    tb = "Traceback (most recent call last)" in text
    work = bool(new_runs or new_work)
    if tb:
        verdict = "traceback"
    elif code == 0 or code == "timeout" or work:
        verdict = "silent"
    else:
        verdict = "clear"
    msg = next((ln for ln in err.splitlines() if "error" in ln.lower()), "") or (err or out).strip().splitlines()[-1:]
    return {"id": case.id, "what": case.what, "exit": code, "traceback": tb, "work": work, "verdict": verdict,
            "message": (msg if isinstance(msg, str) else " ".join(msg))[:150], "s": secs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-j", type=int, default=2, help="cases run at once (default 2)")
    ap.add_argument("-k", default="", help="only cases whose id contains this")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds per case")
    ap.add_argument("--no-control", action="store_true", help="skip the valid control run")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    from fake_ollama import FakeOllama

    cases = [c for c in CASES if a.k in c.id]
    servers = [_canned(200, "text/html", b"<!doctype html><html><title>Sign in</title></html>"),
               _canned(401, "application/json", b'{"error": "unauthorized"}'),
               _canned(200, "application/json", b'{"status": "fine"}')]
    with FakeOllama() as fake, tempfile.TemporaryDirectory(prefix="perfkit-bad-input-") as tmp:
        fake.server.handle_error = lambda request, address: None  # clients that hang up are not news
        urls = {"ollama": fake.url, "closed": f"http://127.0.0.1:{_closed_port()}",
                **{k: f"http://127.0.0.1:{s.server_address[1]}" for k, s in zip(("html", "401", "json"), servers)}}
        work = Path(tmp)
        with ThreadPoolExecutor(a.j) as pool:
            rows = list(pool.map(lambda c: run_case(c, work, urls, a.timeout), cases))
        controls = []
        if not a.no_control:
            controls = [run_case(c, work, urls, a.timeout) for c in CONTROLS]
    for s in servers:
        s.shutdown()
    print(f"{'case':<24} {'exit':>7} {'traceback':>9} {'work':>5}  verdict    message")
    for r in rows + controls:
        print(f"{r['id']:<24} {str(r['exit']):>7} {('yes' if r['traceback'] else 'no'):>9} "
              f"{('yes' if r['work'] else 'no'):>5}  {r['verdict']:<9}  {r['message']}")
    n = len(rows)
    clear = sum(r["verdict"] == "clear" for r in rows)
    tbs = sum(r["verdict"] == "traceback" for r in rows)
    silent = sum(r["verdict"] == "silent" for r in rows)
    for control in controls:
        ok = control["exit"] == 0 and control["work"]
        print(f"\n{control['id']} ({control['what']}): exit {control['exit']}, work started: {control['work']} "
              f"→ {'accepted as it should be' if ok else 'NOT accepted: a valid input refused'}")
    print(f"\ntotals: {n} cases: clear errors before work {clear}/{n} · tracebacks {tbs} · silent acceptances {silent}")
    if a.json:
        Path(a.json).write_text(json.dumps({"cases": rows, "controls": controls}, indent=2))
    return 0 if clear == n else 1


if __name__ == "__main__":
    sys.exit(main())
