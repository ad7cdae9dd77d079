"""The ``perfkit`` command."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from pathlib import Path

from perfkit.core.settings import PARALLEL, name_of
from perfkit.core.errors import PerfkitError

EPILOG = """examples:
  perfkit run params/demo.yaml                  every study on the embedded engine → results/index.html
  perfkit run params/demo.yaml --study cold_start
  perfkit run params/demo.yaml --resume results/<run-id>   finish an interrupted run, nothing measured twice
  perfkit report results/<run-id>               re-render the HTML from recorded data, no server needed
  perfkit compare results/<A> results/<B>       before and after: what changed between two runs, and is it real
  perfkit run params/demo.yaml --repeat 3       three replicates: a comparison then has runs as its unit
  perfkit tune params/demo.yaml                 search, prove and write out the settings this server should run
  perfkit gate --baseline main results/<run-id>   CI: exit 0 no regression, 1 a regression, 2 inconclusive
  perfkit baseline save main results/<run-id>   keep a run as the baseline the gate compares with
  perfkit history --sql "select run_id, value from figures where tag = 'ttft'"   every run's figures
  perfkit lab                                   the study notebooks in JupyterLab (also as root)
  perfkit models prepare && perfkit models      the embedded model store
  perfkit engine start --set num_batch=256 && perfkit engine status && perfkit engine stop
  perfkit agent join --address HEAD:6379 --host gpu-a --server http://127.0.0.1:11434   a GPU host joins the cluster
"""


class Terminated(KeyboardInterrupt):
    """SIGTERM / SIGHUP, unwound like Ctrl-C; the exit status is 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _sigterm(signum, frame):
    # Turn SIGTERM into the same clean unwinding as Ctrl-C: every server started gets stopped.
    raise Terminated(signum)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= 100:
        raise argparse.ArgumentTypeError(f"{n} is out of range: 1 to 100")
    return n


def _share(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (a share such as 0.1 for 10%)") from None
    if not 0 <= x < 1:
        raise argparse.ArgumentTypeError(f"{x} is out of range: a share from 0 to below 1")
    return x


def _settings(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise PerfkitError(f"--set {p!r}: expected NAME=VALUE, e.g. {name_of(PARALLEL)}=2")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@contextlib.contextmanager
def _params_file(arg: str):
    """The parameter file to run with: ``-`` reads it from standard input, and a pipe (``<(envsubst < p.yaml)``)
    is read once, each checked like a file, kept in a private temporary file for the run, which may need its
    secret values, and removed after."""
    import os
    import tempfile

    from perfkit.core.yamlfile import is_pipe, read_text

    if arg != "-" and not is_pipe(arg):
        yield Path(arg)
        return
    text = read_text(arg)
    fd, name = tempfile.mkstemp(prefix="perfkit-stdin-" if arg == "-" else "perfkit-pipe-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def cmd_run(a) -> int:
    from perfkit.run import pipeline

    run_dir = Path(a.resume) if a.resume else None
    if run_dir is not None and not run_dir.is_dir():
        raise PerfkitError(f"--resume {run_dir}: no such run directory")
    if run_dir is not None and not (run_dir / "run.json").exists():
        raise PerfkitError(f"--resume {run_dir}: not a perfkit run directory (no run.json)")
    if a.retry_failed and run_dir is None:
        raise PerfkitError("--retry-failed needs --resume RUN_DIR: it measures again the failed trials of that run")
    results = Path(a.results) if a.results else (run_dir.parent if run_dir else Path("results"))
    with _params_file(a.params) as params:
        out = pipeline.run(params, a.study or [], results, run_dir, retry_failed=a.retry_failed, repeat=a.repeat)
    print(f"\nreports: {out}/*.html\nindex:   {results / 'index.html'}")
    return 0


def cmd_tune(a) -> int:
    """The tuning study alone: search, race, prove; then the recommendation and the files to deploy."""
    from perfkit.analysis.figures import FILE_NAME, FigureSet
    from perfkit.compare import before_after
    from perfkit.run import pipeline

    run_dir = Path(a.resume) if a.resume else None
    if run_dir is not None and not (run_dir / "run.json").exists():
        raise PerfkitError(f"--resume {run_dir}: not a perfkit run directory (no run.json)")
    results = Path(a.results) if a.results else (run_dir.parent if run_dir else Path("results"))
    with _params_file(a.params) as params:
        out = pipeline.run(params, ["tuning"], results, run_dir)
    rows = [r for r in before_after.in_run(out) if r.study == "tuning"]
    figs = FigureSet.read(out / "tuning" / FILE_NAME) if (out / "tuning" / FILE_NAME).is_file() else FigureSet()
    tuned = next((f for f in figs.headlines() if f.headline.startswith("tuned")), None)
    if tuned is not None:
        print(f"\ntuned: {tuned.where.get('setting')}  ({tuned.label}: {tuned.text()})")
    for r in rows:
        print(f"  {r.what}: {r.row.before} → {r.row.after}  {r.row.change_text}  {r.row.verdict}")
    deploy = out / "tuning" / "tuned"
    if deploy.is_dir():
        print(f"to deploy: {deploy}/ ({', '.join(sorted(p.name for p in deploy.rglob('*') if p.is_file()))})")
    print(f"report: {out / 'tuning.html'}")
    return 0


def cmd_report(a) -> int:
    from perfkit.run import pipeline

    run_dir = Path(a.run_dir)
    if not run_dir.is_dir():
        raise PerfkitError(f"{run_dir}: no such run directory")
    pipeline.report(run_dir, allow_damaged=a.allow_damaged)
    print(f"index: {run_dir.parent / 'index.html'}")
    return 0


def cmd_compare(a) -> int:
    from perfkit.run import pipeline

    out, comparison = pipeline.compare(Path(a.run_a), Path(a.run_b), Path(a.out) if a.out else None,
                                       min_effect=a.min_effect)
    print(comparison.terminal_summary())
    print(f"comparison: {out}\ndata:       {out.parent / 'comparison.json'}")
    return 0


def _effects(items: list[str]) -> dict[str, float]:
    out = {}
    for it in items or []:
        pattern, sep, value = it.partition("=")
        if not sep or not pattern:
            raise PerfkitError(f"--min-effect-for {it!r}: PATTERN=SHARE, e.g. 'ttft*=0.1'")
        out[pattern] = _share(value)
    return out


def cmd_gate(a) -> int:
    import os

    from perfkit.compare import baselines
    from perfkit.compare.gate import gate

    if bool(a.baseline) == bool(a.baseline_run):
        raise PerfkitError("gate: give the baseline as a run directory (perfkit gate BASELINE RUN) or by name "
                           "(perfkit gate --baseline NAME RUN), one of the two")
    base = baselines.read(a.baseline, a.store).path if a.baseline else a.baseline_run
    res = gate(base, a.run, figures=a.figures, min_effects=_effects(a.min_effect_for),
               default_min_effect=a.min_effect, allow_other_fingerprint=a.allow_other_fingerprint)
    print(res.text())
    md = res.markdown()
    for path in filter(None, (a.markdown, os.environ.get("GITHUB_STEP_SUMMARY"))):
        with open(path, "a") as f:
            f.write(md)
    if a.junit:
        Path(a.junit).write_text(res.junit())
    if a.json:
        Path(a.json).write_text(json.dumps(res.as_dict(), indent=2, default=str))
    return res.code


def cmd_baseline(a) -> int:
    from perfkit.compare import baselines

    if a.action == "save":
        if not a.name or not a.run:
            raise PerfkitError("baseline save NAME RUN: both are needed")
        b = baselines.save(a.name, a.run, a.store, replace=a.replace)
        print(f"baseline {b.name}: {b.source} ({', '.join(b.studies)}), fingerprint {b.fingerprint_id}, kept in "
              f"{Path(b.path).parent}")
    elif a.action == "list":
        rows = baselines.list_all(a.store)
        if not rows:
            print(f"no baselines in {baselines.store_dir(a.store)}")
        for b in rows:
            print(f"{b.name:<24} {b.saved_utc:<22} {b.fingerprint_id}  {Path(b.source).name} ({', '.join(b.studies)})")
    else:
        if not a.name:
            raise PerfkitError("baseline show NAME: which one")
        print(json.dumps(baselines.read(a.name, a.store).as_dict(), indent=2, default=str))
    return 0


def cmd_history(a) -> int:
    from perfkit.compare import history
    from perfkit.run.history_page import write_history

    results = Path(a.results)
    if not results.is_dir():
        raise PerfkitError(f"{results}: no results directory (give --results DIR, where `perfkit run` wrote its runs)")
    db = Path(a.db) if a.db else results / history.DB_NAME
    if a.rebuild or not db.exists() or not a.sql:
        page = write_history(results)
        print(f"history: {page}\ndatabase: {db}")
    if a.sql:
        import pandas as pd

        with pd.option_context("display.max_rows", 200, "display.width", 160):
            print(history.query(a.sql, db).to_string(index=False))
    return 0


def cmd_lab(a) -> int:
    """JupyterLab on the study notebooks, as root too (containers): the notebooks run as they are there."""
    import os

    from perfkit.run.lab import command
    from perfkit.studies.base import NOTEBOOKS

    cmd = command(NOTEBOOKS.parent, a.args)
    os.execv(cmd[0], cmd)
    return 0


def cmd_agent(a) -> int:
    from perfkit.cluster import join

    for what, shows in join.check(a.server):
        print(f"  {what:<12} {shows}")
    if a.action == "check":
        return 0
    if a.action == "stop":
        return join.run([join.ray_command(), "stop"])
    args = join.start_args(head=a.action == "head", address=a.address, server_host=a.host, client=a.client,
                           port=a.port)
    print("$ " + " ".join(args), flush=True)
    return join.run(args)


def _study_names() -> list[str]:
    from perfkit.studies import registry

    try:
        return registry.names()
    except Exception:  # noqa: BLE001 - a broken plugin is reported when it is used, not in --help
        return []


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="perfkit", description="Measure, explain and tune LLM inference servers "
                                "(Ollama, llama.cpp) and publish reproducible HTML reports.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run studies from a parameter file and publish HTML reports",
                       description="Execute the study notebooks with papermill into results/<run-id>/ "
                                   "(data, executed notebooks, logs), render HTML reports and refresh results/index.html.")
    r.add_argument("params", help="parameter file, e.g. params/demo.yaml; - reads it from standard input")
    r.add_argument("--study", action="append", metavar="NAME",
                   help="only this study (repeatable): " + ", ".join(_study_names()))
    r.add_argument("--results", metavar="DIR", help="results directory (default: results)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run; completed trials are not redone. "
                   "PARAMS must be the file the run was started with (it supplies the secret values, such as "
                   "backend.headers, that the run's own params.yaml has redacted)")
    r.add_argument("--repeat", type=_positive, metavar="N",
                   help="measure each study N times in this run, interleaved (overrides `repeat:` in PARAMS); "
                        "with ≥ 3 a side, `perfkit compare` compares runs, not requests")
    r.add_argument("--retry-failed", action="store_true",
                   help="with --resume: measure again the trials whose last attempt failed (the failed rows are "
                        "kept; the analysis uses each trial's latest attempt). Load series are re-run only if "
                        "interrupted")
    r.set_defaults(fn=cmd_run)

    tu = sub.add_parser("tune", help="search the server's settings, prove the best against today's, write it out",
                        description="Run the tuning study of PARAMS (its studies.tuning section): the server kind's "
                                    "settings searched and raced until the best is separated, proven against the "
                                    "baseline, and written out to deploy (results/<run-id>/tuning/tuned/).")
    tu.add_argument("params", help="parameter file with a studies.tuning section; - reads it from standard input")
    tu.add_argument("--results", metavar="DIR", help="results directory (default: results)")
    tu.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted tune: nothing measured twice")
    tu.set_defaults(fn=cmd_tune)

    rp = sub.add_parser("report", help="re-render a run's reports from recorded data (no server)",
                        description="Re-execute the notebooks in report mode on recorded data and render HTML again.")
    rp.add_argument("run_dir", help="results/<run-id>")
    rp.add_argument("--allow-damaged", "--force", action="store_true",
                    help="render even if recorded data is damaged (unreadable lines, missing manifest); each "
                         "affected report then opens with a warning. Without it, damaged data is an error (exit 2)")
    rp.set_defaults(fn=cmd_report)

    c = sub.add_parser("compare", help="compare two runs: what differs, and which changes are real (no server)",
                       description="Compare run A (before) with run B (after) from their recorded data: every figure "
                                   "both measured, the ratio after/before with its CI (Hodges–Lehmann, Moses) and a "
                                   "verdict (improved, worse, no detectable change at this n), what differs between "
                                   "their manifests, and confounds. Writes comparison.json and comparison.html.")
    c.add_argument("run_a", help="the run before the change: results/<run-id>")
    c.add_argument("run_b", help="the run after the change: results/<run-id>")
    c.add_argument("--out", metavar="DIR", help="output directory (default: <results>/compare-<A>-vs-<B>/ beside run A)")
    c.add_argument("--min-effect", type=_share, metavar="SHARE",
                   help="single runs only: the smallest change that may be called, as a share (default 0.20, from the "
                        "spread between two runs of the same parameters; 0 calls any CI that excludes 1)")
    c.set_defaults(fn=cmd_compare)

    g = sub.add_parser("gate", help="CI: did a run regress against its baseline? (exit 0 no, 1 yes, 2 can't tell)",
                       description="Compare RUN with a baseline (a run directory, or --baseline NAME) as `perfkit "
                                   "compare` does, on the figures chosen, and exit 0 when none got worse, 1 when one "
                                   "did (beyond its minimum effect, after the FDR correction), 2 when the runs are not "
                                   "comparable (another host, server version, model file or workload), too small to "
                                   "call anything, noisy or still being measured. Writes a Markdown summary (also to "
                                   "$GITHUB_STEP_SUMMARY when set), JUnit XML and JSON on request.")
    g.add_argument("baseline_run", nargs="?", help="the baseline run directory (or use --baseline NAME)")
    g.add_argument("run", help="the run to gate: results/<run-id>")
    g.add_argument("--baseline", metavar="NAME", help="a baseline saved with `perfkit baseline save`")
    g.add_argument("--store", metavar="DIR", help="where baselines are kept (default $PERFKIT_BASELINES or ./baselines)")
    g.add_argument("--figures", nargs="+", metavar="GLOB", help="figures that gate, by tag, key or headline "
                   "(e.g. 'ttft*' 'cold_start/*' 'warm start'); default: every figure both runs measured")
    g.add_argument("--min-effect", type=_share, metavar="SHARE", help="the smallest change that counts (default 0.20)")
    g.add_argument("--min-effect-for", nargs="+", metavar="GLOB=SHARE", help="per figure, e.g. 'ttft*=0.1'")
    g.add_argument("--allow-other-fingerprint", action="store_true",
                   help="gate runs of another host, server version, model file or workload anyway")
    g.add_argument("--markdown", metavar="FILE", help="append the Markdown summary here")
    g.add_argument("--junit", metavar="FILE", help="write JUnit XML (one test case per gated figure)")
    g.add_argument("--json", metavar="FILE", help="write the result as JSON")
    g.set_defaults(fn=cmd_gate)

    bl = sub.add_parser("baseline", help="save, list or show the baselines the gate compares with",
                        description="A baseline is a run's figures and manifests kept under a name, with the "
                                    "fingerprint of what makes runs comparable (host, GPUs, server version, model "
                                    "digests, workload); small enough to commit.")
    bl.add_argument("action", choices=["save", "list", "show"])
    bl.add_argument("name", nargs="?")
    bl.add_argument("run", nargs="?", help="save: the run directory to keep")
    bl.add_argument("--store", metavar="DIR", help="default $PERFKIT_BASELINES or ./baselines")
    bl.add_argument("--replace", action="store_true", help="save: replace a baseline of another fingerprint")
    bl.set_defaults(fn=cmd_baseline)

    h = sub.add_parser("history", help="every run's figures in one database, and the history page",
                       description="Rebuild results/history.duckdb (tables runs, figures, facts) and "
                                   "results/history.html from the run directories; --sql queries the database.")
    h.add_argument("--results", default="results", help="the results directory (default: results)")
    h.add_argument("--db", help="the database (default: RESULTS/history.duckdb)")
    h.add_argument("--sql", help="a query to run, e.g. \"select run_id, value from figures where tag = 'ttft'\"")
    h.add_argument("--rebuild", action="store_true", help="rebuild even when only querying")
    h.set_defaults(fn=cmd_history)

    lab = sub.add_parser("lab", help="open the study notebooks in JupyterLab (also as root)",
                         description="Start JupyterLab on notebooks/ (with --allow-root when run as root); further "
                                     "arguments go to jupyter lab, e.g. --no-browser --port 8888.")
    lab.add_argument("args", nargs=argparse.REMAINDER, help="arguments for jupyter lab")
    lab.set_defaults(fn=cmd_lab)

    from perfkit import kinds

    for name in kinds.names():  # a kind's own commands (the embedded engine's: models, engine)
        kinds.get(name).add_commands(sub, settings_of=_settings, port=_port)

    ag = sub.add_parser("agent", help="join this host to a Ray cluster as a server host or a client node",
                        description="Check what perfkit's agent sees on this host (perfkit, Ray, NVML's GPUs, the server "
                                    "by its port), then `ray start` with the resource that names the host: "
                                    "perfkit-host:NAME for a server host, perfkit-client:NAME for a client node.")
    ag.add_argument("action", choices=["check", "head", "join", "stop"])
    ag.add_argument("--address", metavar="HEAD:PORT", help="join: the head's address")
    ag.add_argument("--host", metavar="NAME", help="join as the server host NAME (fleet.hosts[].host, backend.host)")
    ag.add_argument("--client", metavar="NAME", help="join as the client node NAME (cluster.clients)")
    ag.add_argument("--server", metavar="URL", help="check that the server listens here, e.g. http://127.0.0.1:11434")
    ag.add_argument("--port", type=_port, default=6379, help="head: the port (default 6379)")
    ag.set_defaults(fn=cmd_agent)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lab"]:
        # Everything after `lab` is Jupyter's (--no-browser, --port 8899): argparse would take them for its own.
        args = argparse.Namespace(fn=cmd_lab, args=argv[1:])
        if any(a in ("-h", "--help") for a in argv[1:2]):
            args = build_parser().parse_args(argv)
    else:
        args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGHUP, _sigterm)
    try:
        return args.fn(args)
    except PerfkitError as e:
        from perfkit.core.secrets import redact_text

        print(f"perfkit: error: {redact_text(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        where = getattr(e, "run_dir", None)
        print(f"perfkit: {how}; servers stopped, everything measured is kept"
              + (f" in {where}; go on with: {e.resume}" if where else ""), file=sys.stderr)
        return 128 + signum
    except OSError as e:  # a file system problem not caught earlier: say which file, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"perfkit: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
