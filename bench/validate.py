#!/usr/bin/env python3
"""Validate perfkit against the scripted Ollama, whose delays are known and whose own account of every
request (truth.jsonl) is the reference.

    python bench/validate.py [--reps 10] [--json out.json] [--keep DIR]

perfkit's production path is driven through its public API (OllamaBackend with the local controller,
prepare_state via Runner, plan, RunStore) against real processes (the stand-in ``ollama serve`` and its
runner children). Per cache state (cold_memory, warm, warm_cached) it runs ``--reps`` trials, then the
same warm plan twice more as new runs against the same long-lived server (a second run of the same
parameters must not find its prompts in the server's prompt cache), and a control whose "warm" trials
all send one prompt (there the truth must contradict every claim: the prompt comes from the cache).

Each perfkit row is joined to the truth line of the request it measured (same prompt, first arrival
after the client sent it). Figures compared, |perfkit − reference| in ms:
  TTFT      client TTFT            vs server: first token written − request arrival (loopback + client cost)
  e2e       client e2e             vs server: last byte written − request arrival
  load      server load_duration   vs server: runner spawn → ready (the difference is scheduler time)
  prefill   prompt_eval_duration   vs the prefill the server slept (parse/unit check), and vs the
            injected s/token × uncached tokens ("inj.": adds the stand-in's sleep overshoot)
  decode    eval_duration          vs the server's first → last token, and vs injected (tokens − 1) × ITL
  ITL       client gaps            vs server gaps between chunk writes (per token)
  ITL inj.  client gaps            vs injected ITL
A cache-state claim is contradicted when the truth says: a warm/warm_cached trial loaded the model
during its request, or a warm trial got ≥ 50% of its prompt (beyond the 12-token template) from the
cache, or a cold trial found the model loaded at arrival, or a warm_cached trial got no cache hit.
Exit status 0 (it prints figures; it passes no judgement besides the labels).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, os.environ.get("PERFKIT_SRC", str(ROOT)))  # PERFKIT_SRC: measure another checkout (before/after)

from scripted_ollama.harness import ScriptedOllama  # noqa: E402

from perfkit.kinds.ollama import OllamaBackend  # noqa: E402
from perfkit.client.backends import Sampling  # noqa: E402
from perfkit.measure.runner import Runner, Trial, plan  # noqa: E402
from perfkit.core.store import RunStore  # noqa: E402

MODEL = "qwen2.5:32b-instruct-q4_K_M"
INJECTED = {"load_s": 0.4, "prefill_s_per_token": 0.002, "itl_s": 0.005, "vram_release_s": 0.3}
OUTPUT_TOKENS = 32
PROMPT_WORDS = 48
STATES = ("cold_memory", "warm", "warm_cached")


# ---- small statistics ----------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


@dataclass
class Figure:
    """One compared figure: signed differences perfkit − reference, in seconds."""

    name: str
    reference: str
    diffs_s: list[float] = field(default_factory=list)

    def add(self, perfkit: float | None, ref: float | None) -> None:
        if perfkit is None or ref is None or (isinstance(perfkit, float) and math.isnan(perfkit)):
            return
        self.diffs_s.append(float(perfkit) - float(ref))

    def summary(self) -> dict[str, Any]:
        a = [abs(d) * 1e3 for d in self.diffs_s]
        return {"figure": self.name, "n": len(a), "median_abs_ms": statistics.median(a) if a else math.nan,
                "p99_abs_ms": pct(a, 99), "median_signed_ms": statistics.median(d * 1e3 for d in self.diffs_s)
                if a else math.nan, "reference": self.reference}


@dataclass
class Claims:
    """Cache-state claims and the ones the server's truth contradicts."""

    checked: int = 0
    contradicted: int = 0
    contradicted_while_perfkit_verified: int = 0
    perfkit_flagged: int = 0
    perfkit_flagged_and_contradicted: int = 0
    perfkit_verdicts: dict[str, int] = field(default_factory=dict)  # state_verified: True / False / None / absent
    reasons: list[str] = field(default_factory=list)


# ---- joining perfkit rows to the truth -----------------------------------------------------------
def join(rows: list[dict], prompts: dict[str, str], truth: list[dict]) -> list[tuple[dict, dict | None]]:
    """Each row with the truth line of the request it measured: same first 60 prompt characters, the
    first unused generate line that arrived after the client sent (priming requests come before)."""
    gens = [t for t in truth if t.get("kind") == "generate"]
    used: set[int] = set()
    out = []
    for row in sorted(rows, key=lambda r: r.get("wall_send_unix_s") or 0):
        head = prompts.get(row.get("trial_id", ""), "")[:60]
        sent = row.get("wall_send_unix_s") or 0
        match = None
        for t in gens:
            if t["seq"] in used or t.get("prompt_head") != head:
                continue
            if t["arrival_wall"] >= sent - 0.002:
                match = t
                break
        if match is not None:
            used.add(match["seq"])
        out.append((row, match))
    return out


def contradiction(state: str, t: dict) -> str | None:
    template = t.get("template_tokens", 12)
    beyond = (t.get("cached_tokens") or 0) - template
    rest = max(1, (t.get("prompt_tokens") or 0) - template)
    if state in ("warm", "warm_cached", "first_after_load") and (t.get("loaded_during") or t.get("joined_load")):
        return "the model loaded during the request"
    if state == "warm" and beyond >= 0.5 * rest:
        return f"{beyond} of {rest} prompt tokens beyond the template came from the cache"
    if state.startswith("cold") and t.get("loaded_at_arrival"):
        return "the model was loaded when the request arrived"
    if state == "warm_cached" and beyond <= 0:
        return "no prompt-cache hit beyond the template"
    return None


def compare(pairs: Iterable[tuple[dict, dict | None]], figs: dict[str, Figure], claims: Claims) -> int:
    unmatched = 0
    for row, t in pairs:
        if t is None:
            unmatched += 1
            continue
        state = row.get("cache_state", "")
        figs["TTFT"].add(row.get("ttft_s"), t["first_token_mono"] - t["arrival_mono"])
        figs["e2e"].add(row.get("e2e_s"), t["end_mono"] - t["arrival_mono"])
        if t.get("loaded_during") and t.get("load_s") is not None:
            figs["load"].add(row.get("load_s"), t["load_s"])
        figs["prefill"].add(row.get("prefill_s"), t.get("prefill_s"))
        figs["prefill inj."].add(row.get("prefill_s"), t.get("prefill_s_planned"))
        figs["decode"].add(row.get("decode_s"), t.get("decode_s"))
        n = t.get("eval_count") or 0
        figs["decode inj."].add(row.get("decode_s"), max(0, n - 1) * t["itl_s"])
        gaps = row.get("itl_s") or []
        for c, s in zip(gaps, t.get("gaps_s") or []):
            figs["ITL"].add(c, s)
        for c in gaps:
            figs["ITL inj."].add(c, t["itl_s"])
        claims.checked += 1
        why = contradiction(state, t)
        flagged = row.get("state_verified") is False
        claims.perfkit_flagged += flagged
        v = row.get("state_verified", "absent")
        key = "absent" if v == "absent" else str(v if v is None or isinstance(v, bool) else bool(v))
        claims.perfkit_verdicts[key] = claims.perfkit_verdicts.get(key, 0) + 1
        if why:
            claims.contradicted += 1
            claims.perfkit_flagged_and_contradicted += flagged
            claims.contradicted_while_perfkit_verified += not flagged
            claims.reasons.append(f"{row.get('trial_id')}: claimed {state}: {why}"
                                  + (" (perfkit flagged it too)" if flagged else ""))
    return unmatched


def new_figures() -> dict[str, Figure]:
    return {f.name: f for f in [
        Figure("TTFT", "server first token written − arrival"),
        Figure("e2e", "server last byte written − arrival"),
        Figure("load", "server runner spawn → ready"),
        Figure("prefill", "server's prefill as it slept it (a parse/unit check)"),
        Figure("prefill inj.", "injected s/token × uncached tokens"),
        Figure("decode", "server's first → last token (a parse/unit check)"),
        Figure("decode inj.", "injected (tokens − 1) × ITL"),
        Figure("ITL", "server gaps between chunk writes"),
        Figure("ITL inj.", "injected ITL"),
    ]}


# ---- running perfkit -----------------------------------------------------------------------------
def run_plan(backend: OllamaBackend, run_dir: Path, state: str, reps: int, prefix: str,
             **trial_kw: Any) -> tuple[list[dict], dict[str, str], str]:
    store = RunStore(run_dir)
    runner = Runner(backend, store, progress=False, timeout_s=120)
    trials: list[Trial] = plan([MODEL], reps, prefix=prefix, warmup=1, cache_state=state,
                               sampling=Sampling.greedy(OUTPUT_TOKENS), prompt_words=PROMPT_WORDS, **trial_kw)
    df = runner.run(trials, desc=prefix)
    rows = [r for r in df.to_dict("records") if not r.get("warmup")]
    nonce = getattr(runner, "nonce", "")  # perfkit before the per-run nonce: prompts from the trial id alone
    prompts = {t.trial_id: (t.prompt_with(nonce) if hasattr(t, "prompt_with") else t.prompt) for t in trials}
    return rows, prompts, nonce


def uptime() -> tuple[str, float]:
    try:
        text = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        text = ""
    load1 = os.getloadavg()[0]
    return text or f"load average: {load1:.2f}", load1


def fmt(x: float) -> str:
    return "   n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:7.3f}"


def print_table(title: str, figs: dict[str, Figure]) -> list[dict]:
    print(f"\n{title}")
    print(f"  {'figure':<12} {'n':>4}  {'median|Δ| ms':>12}  {'p99|Δ| ms':>10}  {'median Δ ms':>11}  reference")
    out = []
    for f in figs.values():
        s = f.summary()
        out.append(s)
        print(f"  {s['figure']:<12} {s['n']:>4}  {fmt(s['median_abs_ms']):>12}  {fmt(s['p99_abs_ms']):>10}  "
              f"{fmt(s['median_signed_ms']):>11}  {s['reference']}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="perfkit vs the scripted Ollama's truth")
    ap.add_argument("--reps", type=int, default=10, help="trials per cache state (default 10)")
    ap.add_argument("--json", type=Path, help="write every figure and claim here")
    ap.add_argument("--keep", type=Path, help="keep the server home and run stores here (default: a temp dir)")
    a = ap.parse_args()

    up0, load0 = uptime()
    print(f"start: {up0}" + ("   ← busy machine" if load0 > 1.5 else ""))
    work = a.keep or Path(tempfile.mkdtemp(prefix="perfkit-validate-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"scripted Ollama: model {MODEL}, injected load {INJECTED['load_s']} s, prefill "
          f"{INJECTED['prefill_s_per_token'] * 1e3:g} ms/token, ITL {INJECTED['itl_s'] * 1e3:g} ms × "
          f"{OUTPUT_TOKENS} tokens, VRAM release {INJECTED['vram_release_s']} s; TCP_NODELAY; {a.reps} reps/state")
    result: dict[str, Any] = {"injected": INJECTED, "model": MODEL, "reps": a.reps, "uptime_start": up0}
    t_start = time.monotonic()
    so = ScriptedOllama(work / "ollama", models={MODEL: INJECTED})
    backend = None
    try:
        so.start()
        backend = OllamaBackend(so.url)
        result["control"] = type(getattr(backend, "control", None)).__name__
        figs, claims, unmatched = new_figures(), Claims(), 0
        per_state: dict[str, dict[str, Figure]] = {}
        for state in STATES:
            rows, prompts, _ = run_plan(backend, work / f"run-{state}", state, a.reps, f"validate-{state}")
            sf = new_figures()
            unmatched += compare(join(rows, prompts, so.truth()), sf, claims)
            per_state[state] = sf
            for k, f in sf.items():
                figs[k].diffs_s += f.diffs_s

        # The prompt-cache trap: the same plan again, as new runs, against the same long-lived server.
        again = Claims()
        for i in range(3):
            rows, prompts, _ = run_plan(backend, work / f"run-again-{i}", "warm", a.reps, "validate-again")
            unmatched += compare(join(rows, prompts, so.truth()), new_figures(), again)
        # Control: "warm" trials that all send one prompt, so each finds it in the slot's cache. The
        # truth must contradict every one of them; Ollama reports no cached-token count, so perfkit can't.
        control = Claims()
        rows, prompts, _ = run_plan(backend, work / "run-control", "warm", a.reps, "validate-control",
                                    prompt_key="one prompt for all")
        unmatched += compare(join(rows, prompts, so.truth()), new_figures(), control)

        result["figures"] = print_table("perfkit − reference, all states (|Δ| in ms)", figs)
        result["per_state"] = {}
        for state, sf in per_state.items():
            result["per_state"][state] = print_table(f"  {state}", sf)
        print("\ncache-state claims (truth.jsonl vs the state each trial claimed)")
        for label, c in (("by state (3 plans)", claims), ("same warm plan, 3 new runs, same server", again),
                         ("control: one prompt for all (expect all contradicted)", control)):
            verdicts = ", ".join(f"{k}: {v}" for k, v in sorted(c.perfkit_verdicts.items()))
            print(f"  {label:<58} checked {c.checked:>3}  contradicted {c.contradicted:>3}  "
                  f"(of those, perfkit flagged {c.perfkit_flagged_and_contradicted}; perfkit's state_verified: "
                  f"{verdicts or 'none'})")
            for r in c.reasons[:4]:
                print(f"      {r}")
        result["claims"] = {"by_state": asdict(claims), "again": asdict(again), "control": asdict(control)}
        result["unmatched_rows"] = unmatched
        if unmatched:
            print(f"  {unmatched} perfkit rows had no truth line (failed requests or a join miss)")
        if not any("state_verified" in r for r in rows):
            print("  note: this perfkit's rows carry no state_verified: 'perfkit flagged' counts are 0 by construction")
    finally:
        if backend is not None:
            try:
                backend.close()
            except Exception:  # noqa: BLE001
                pass
        so.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    up1, load1 = uptime()
    result["uptime_end"] = up1
    result["wall_s"] = time.monotonic() - t_start
    print(f"\nend:   {up1}" + ("   ← busy machine" if load1 > 1.5 else "") + f"   ({result['wall_s']:.0f} s)")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
