"""A/A: how often does `perfkit compare` call a change between two runs of the same thing, and does it still
see a real one?

Runs the cold-start and model-size studies on the embedded engine (small, demo-sized parameters) into run
directories the way `perfkit run` does, without the notebooks (the verdicts depend on the figures only):

* single-run mode: K pairs of runs with identical parameters → the share of comparable rows called
  improved or worse (goal ≤ 5 %), and the spread of the per-request ratios between two runs of the same
  thing (what the minimum practical effect of a single-run comparison must exceed);
* repeat mode: K pairs of runs with `repeat: 3` → the same share with runs as the unit;
* a real change (num_thread 2 → 1) in both modes → whether the warm TTFT rows are called worse.

    .venv/bin/python bench/aa_verdicts.py --pairs 3 --repeat-pairs 2      # ~30 min on 2 cores

Prints the figures; check `uptime` first: a busy machine makes every run noisier.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("PERFKIT_SRC", str(ROOT)))

from perfkit import compare as cmp  # noqa: E402
from perfkit.analysis import verdicts  # noqa: E402
from perfkit.studies.base import REPLICATE_FIGURES, StudyContext, analyze_all  # noqa: E402

PARAMS = {
    "name": "aa",
    "backend": {"kind": "embedded", "settings": {"num_thread": 2}},
    "sampling": {"interval_s": 0.2},
    "studies": {
        "cold_start": {"model": "smollm2-135m-q4_1", "states": ["cold_memory", "warm"], "reps": 8,
                       "strategies": ["none"], "strategy_reps": 1, "idle_gaps_s": [0.5], "num_predict": 16},
        "model_size": {"models": ["smollm2-135m-q4_1", "gemma3-270m-q4_k_m"], "reps": 8, "cold_reps": 3,
                       "num_predict": 24},
        # concurrency series too: their figures (throughput by batch means, a steady window's TTFT and tails)
        # vary between runs in their own way, and the minimum effect must cover them
        "config_tuning": {"model": "smollm2-135m-q4_1", "settings": [{"OLLAMA_NUM_PARALLEL": 2}],
                          "concurrency": [1, 4], "requests": 16, "num_predict": 12, "prompt_words": 24},
    },
}


def measure(root: Path, name: str, *, repeat: int = 1, num_thread: int = 2) -> Path:
    """One run directory: every study, ``repeat`` interleaved replicates, figures combined."""
    run = root / name
    run.mkdir(parents=True)
    p = {**PARAMS, "name": name, "repeat": repeat,
         "backend": {**PARAMS["backend"], "settings": {"num_thread": num_thread}}}
    (run / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for rep in range(1, repeat + 1):
        for study in p["studies"]:
            ctx = StudyContext(run / "params.yaml", run, study, replicate=rep)
            ctx.study.run(ctx).figures.write(ctx.store.dir / REPLICATE_FIGURES)
    for study in p["studies"]:
        analyze_all(run / "params.yaml", run, study)
    return run


def called(c: cmp.Comparison) -> tuple[int, int]:
    """(rows called improved or worse, comparable rows)."""
    rows = [r for r in c.rows if r.verdict != cmp.NOT_COMPARABLE and r.better]
    return sum(r.called for r in rows), len(rows)


def log_ratios(c: cmp.Comparison) -> list[float]:
    """|log ratio| of every row a minimum effect applies to: per-request medians and tails, series estimates."""
    return [abs(math.log(r.ratio.value)) for r in c.rows
            if r.mode in ("requests", "tail", "estimates") and math.isfinite(r.ratio.value) and r.ratio.value > 0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3, help="A/A pairs of single runs")
    ap.add_argument("--repeat-pairs", type=int, default=2, help="A/A pairs of runs with repeat: 3")
    ap.add_argument("--real-repeat", type=int, default=3, help="replicates a side for the real change in repeat mode")
    ap.add_argument("--only-real", action="store_true", help="skip the A/A pairs, measure only the real change")
    ap.add_argument("--no-real", action="store_true", help="skip the real change")
    ap.add_argument("--keep", help="keep the run directories here")
    a = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"machine load before: {load:.2f} (1 min)" + ("  ⚠ busy: figures will be noisier" if load > 0.5 else ""))
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="perfkit-aa-"))
    t0 = time.monotonic()
    try:
        if a.only_real:
            a.pairs = a.repeat_pairs = 0
        spread = []
        for k in range(a.pairs):
            spread += log_ratios(cmp.compare(measure(root, f"s{k}a"), measure(root, f"s{k}b"), min_effect=0.0))
        spread.sort()
        if a.pairs:
            report_single(root, a.pairs, spread)
        n_called = n_rows = 0
        for k in range(a.repeat_pairs):
            c = cmp.compare(measure(root, f"r{k}a", repeat=3), measure(root, f"r{k}b", repeat=3))
            x, n = called(c)
            n_called, n_rows = n_called + x, n_rows + n
            assert c.mode == "runs", c.mode
        if a.repeat_pairs:
            print(f"A/A repeat 3 (runs as the unit): {a.repeat_pairs} pairs, {n_called} of {n_rows} rows called "
                  f"({n_called / max(n_rows, 1):.1%}; goal ≤ 5%)")
        print("\nA real change, num_thread 2 → 1:" if not a.no_real else "")
        for mode, rep in () if a.no_real else (("single runs", 1), (f"repeat {a.real_repeat}", a.real_repeat)):
            c = cmp.compare(measure(root, f"x{rep}a", repeat=rep), measure(root, f"x{rep}b", repeat=rep,
                                                                           num_thread=1))
            x, n = called(c)
            print(f"  {mode}: {x} of {n} comparable rows called")
            for key in ("cold_start/ttft/warm", "cold_start/e2e/warm", "model_size/decode_rate/smollm2-135m-q4_1"):
                r = next((r for r in c.rows if r.key == key), None)
                if r is not None:
                    print(f"  {mode:12s} {key:45s} {r.change_text:24s} p={r.p_value:.3g} q={r.q_value:.3g} "
                          f"{r.verdict}" + ("" if r.called else f" ({r.reason})"))
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{time.monotonic() - t0:.0f} s; machine load after: {os.getloadavg()[0]:.2f}")
    return 0


def report_single(root: Path, pairs: int, spread: list[float]) -> None:
    """The spread of per-request ratios between A/A runs, and the share of rows called with and without the
    minimum practical effect."""
    q95 = spread[int(0.95 * (len(spread) - 1))] if spread else math.nan
    print(f"\nA/A single runs: {pairs} pairs, {len(spread)} per-request rows; |after/before − 1| between two "
          f"runs of the same thing: median {math.expm1(spread[len(spread) // 2]):.1%}, "
          f"95th percentile {math.expm1(q95):.1%}")
    for eff in (0.0, verdicts.MIN_EFFECT):
        n_called = n_rows = 0
        for k in range(pairs):
            x, n = called(cmp.compare(root / f"s{k}a", root / f"s{k}b", min_effect=eff))
            n_called, n_rows = n_called + x, n_rows + n
        print(f"  min_effect {eff:.0%}: {n_called} of {n_rows} rows called improved/worse "
              f"({n_called / max(n_rows, 1):.1%}; goal ≤ 5%)")


if __name__ == "__main__":
    sys.exit(main())
