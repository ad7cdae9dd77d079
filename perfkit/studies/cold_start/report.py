"""The cold start study's conclusions: why the first request is slow and which warmup fixes it, then what the
measurements say."""

from __future__ import annotations

from typing import Any

import pandas as pd

from perfkit.core.units import RATIO, SECONDS
from perfkit.analysis import figures as F, stats
from perfkit.analysis.requests import (est, ignored_think, measured, method_note, negative_overhead_note, noisy_note,
                                       state_note)
from perfkit.analysis.verdicts import MIN_EFFECT, compare_samples
from perfkit.core import fmt
from perfkit.report.answer import answer_block

from .analysis import strategy_claims
from .results import COLD_STATES, ColdStartResult


def _suspect(res: ColdStartResult) -> list[str]:
    """Conclusions that would contradict physics are flagged, never stated as findings."""
    ok = measured(res.states)
    if ok.empty:
        return []
    out = []
    warm, cached = ok[ok["cache_state"] == "warm"]["e2e_s"], ok[ok["cache_state"] == "warm_cached"]["prefill_s"]
    wp = ok[ok["cache_state"] == "warm"]["prefill_s"]
    if len(cached) and len(wp) and compare_samples(wp, cached, "lower").verdict == "worse":
        out.append("⚠ **Suspect data:** the cached prompt's prefill is slower than an uncached one, which a "
                   "prompt-cache hit cannot be; the machine was probably busy.")
    for st in COLD_STATES:
        c = ok[ok["cache_state"] == st]["e2e_s"]
        if len(c) and len(warm) and compare_samples(warm, c, "lower").verdict == "improved":
            out.append(f"⚠ **Suspect data:** {st} requests measured faster than warm ones.")
    return out


def _versus(r: stats.Estimate, what: str) -> str:
    """How a ratio's CI reads: 'x× [lo, hi] the warm median' or that this n can't tell them apart."""
    text = RATIO.estimate(r)
    if r.has_ci and r.lo <= 1 <= r.hi:
        return f"{text} {what}: not distinguishable from it at this n"
    if not r.has_ci:
        return f"{text} {what} (no CI at this n, so no claim either way)"
    return f"{text} {what}"


def conclusions(res: ColdStartResult) -> str:
    f = res.figures
    ok = measured(res.states)
    lines = [answer_block(answer(res), res.failures) + f"### What the measurements say ({res.model})"]
    dev = res.device or {}
    if dev.get("device") == "gpu+cpu":
        lines.insert(0, f"> ⚠ **Partial offload:** {dev.get('cpu_share', 0):.0%} of {res.model} runs on the CPU "
                        f"({dev.get('offload_evidence')}). That, not cold start, explains slow warm requests.")
    for w in _suspect(res) + [noisy_note(res.trials), negative_overhead_note(res.trials)]:
        if w:
            lines.append("- " + w)
    if "cold_start/e2e/warm" in f:
        lines.append(f"- A **warm** request takes {f['cold_start/e2e/warm'].text()} end to end.")
    for st, r in res.ratios.items():
        e2e = f.get(f"cold_start/e2e/{st}")
        if e2e is None:
            continue
        g = ok[ok["cache_state"] == st]
        if st == "warm_cached":
            lines.append(f"- Repeating a prompt the server has cached (**warm_cached**) takes {e2e.text()}: "
                         f"{_versus(r, 'the warm median')}; its prefill is {SECONDS.estimate(est(g['prefill_s']))}.")
            continue
        if st == "first_after_load":
            lines.append(f"- The **first request after a load** (model resident, never used) takes {e2e.text()}: "
                         f"{_versus(r, 'the warm median')}.")
            continue
        load = f.get(f"cold_start/load/{st}")
        share = load.value / e2e.value if load is not None and e2e.value else float("nan")
        what = "After a **server restart**" if st == "cold_server" else f"From **{st}**"
        lines.append(f"- {what}, the first request takes {e2e.text()}: {_versus(r, 'the warm median')}"
                     + (f"; loading the model is {load.text()}, {share:.0%} of it." if load is not None else "."))
    lines += _thinking_lines(res)
    sp = res.splits
    if len(sp) and "server_runner_start_s" in sp and sp["server_runner_start_s"].notna().any():
        g = sp[sp["server_runner_start_s"].notna()]
        lines.append(f"- The server's own log: the runner started in {SECONDS.estimate(est(g['server_runner_start_s']))}"
                     + (f" and the first token came {SECONDS.estimate(est(g['server_ready_to_first_token_s']))} after it was "
                        "ready" if "server_ready_to_first_token_s" in g and g["server_ready_to_first_token_s"].notna().any()
                        else "") + ".")
    elif res.account is not None and res.account.why_empty:
        lines.append(f"- The server's own account is unavailable: {res.account.why_empty}.")
    acc = res.account
    host = (res.manifest.get("control") or {}).get("host")
    if acc is not None and host and acc.host_clock_uncertainty_s is not None:
        lines.append(f"- The server runs on host {host}; perfkit's agent there read its processes, files and log. Its "
                     f"times are on the run's clock within ± {fmt.duration(acc.host_clock_uncertainty_s)} (the measured "
                     "offset of that host's clock).")
    if acc is not None and acc.clock_n:
        lines.append(f"- The server's log and the run's clock: request ends differ by {fmt.duration(acc.clock_offset_s)} "
                     f"(median of {acc.clock_n} requests; the server stamps whole seconds"
                     + (f"; its zone-less stamps read in {acc.zone}" if acc.zone else "") + ").")
    if res.limit:
        L = res.limit
        lines.append(f"- Load floor: {fmt.size(L['model_bytes'])} at the measured "
                     f"{fmt.size(L['read_bandwidth_bytes_s'])}/s cold read = {fmt.duration(L['load_floor_s'])}; "
                     f"the cold-disk load ({SECONDS.estimate(L['cold_disk_load_s'])}) runs at {L['pct_of_limit']:.0f}% of that "
                     "limit, so " + ("reading the file is most of the load." if L["pct_of_limit"] > 50
                                     else "most of the load is not disk reading (allocation, set-up, warm-up)."))
    elif res.read_bandwidth and res.read_bandwidth.get("unknown_because"):
        lines.append(f"- Load floor: unknown, because {res.read_bandwidth['unknown_because']}.")
    lines += _strategy_lines(res)
    if res.state_skipped:
        lines.append(f"- `{res.state_skipped['state']}` not measured: {res.state_skipped['why']}.")
    lines += _scheme_a_lines(res)
    for note in (state_note(res.trials), res.failures):
        if note:
            lines.append("- " + note)
    lines.append("")
    lines.append(method_note(res.manifest))
    return "\n".join(lines)


def _thinking_lines(res: ColdStartResult) -> list[str]:
    """Where the model thought: per cache state, its first answer token beside TTFT (its first thought), the thinking
    time and tokens; where ``think`` was asked and nothing was thought, that it was ignored."""
    out = []
    f, b = res.figures, res.by_state
    if res.thinking and len(b):
        parts = []
        for _, r in b.iterrows():
            st = r["cache_state"]
            ttfa, took, tokens = (f.get(f"cold_start/{tag}/{st}") for tag in ("ttfa", "thinking_time", "thinking_tokens"))
            if ttfa is None:
                continue
            parts.append(f"**{st}** first answer token {ttfa.text()} (TTFT {SECONDS.ci(r['ttft_s'], r['ttft_s_lo'], r['ttft_s_hi'])})"
                         + (f" after {took.text()} of thinking, {tokens.text()}" if took is not None and tokens is not None
                            else ", no thinking"))
        asked = "" if res.think is None else f" (asked with think: {str(res.think).lower()})"
        out.append(f"- **Thinking**{asked}: this model thinks before it answers, so its TTFT is the first *thought* "
                   "and the split's decode is its thinking, then its answer; a user waits for the first answer token: "
                   + "; ".join(parts) + ".")
    ignored = ignored_think(measured(res.states))
    if ignored:
        out.append(f"- **`think` was ignored**: {ignored} request(s) asked the model to think and streamed no thought (the "
                   "server, or the model's template, does not support it); their split has no thinking.")
    return out


def _strategy_claims(res: ColdStartResult) -> list[tuple[float, dict[str, F.Figure], Any]]:
    return strategy_claims(measured(res.strategy_trials), res.strategy_looks.confidence, res.figures)


def _strategy_lines(res: ColdStartResult) -> list[str]:
    """Per idle gap: which warmup the first request is fastest with, claimed only where it beats every other
    strategy (the same tested claim as the best setting of config tuning)."""
    sok = measured(res.strategy_trials)
    out = []
    for gap, figs, claim in _strategy_claims(res):
        g = sok[sok["idle_gap_s"] == gap]
        ka = g["keep_alive_s"].iloc[0]
        resident = {s: g[g["strategy"] == s]["loaded_at_send"].mean() for s in figs}
        head = (f"- After an idle gap of {fmt.duration(gap)} (keep-alive {fmt.duration(ka)}): "
                + "; ".join(f"**{s}** {x.text()} (model resident at send in {resident[s]:.0%})" for s, x in figs.items()))
        beaten = [s for s, r in claim.rows.items() if s not in claim.not_separated]
        if claim.called and beaten:
            head += f". **{claim.best}** is the fastest: it beats {', '.join(beaten)}"
        elif beaten:
            head += (f". **{claim.best}** is faster than {', '.join(beaten)}; "
                     + (f"equal to {', '.join(claim.not_separated)} within ±{claim.min_effect:.0%}" if claim.settled
                        else f"not separated from {', '.join(claim.not_separated)} at this n"))
        elif claim.settled and len(figs) > 1:
            head += f". All are equal within ±{claim.min_effect:.0%}: no warmup strategy changes this first request"
        elif len(figs) > 1:
            head += ". At this n no strategy is distinguishable from another"
        out.append(head + ".")
        if "keep_warm" in figs and "none" in figs and compare_samples(
                figs["none"].samples, figs["keep_warm"].samples, "lower").verdict == "worse":
            out.append("  ⚠ Keep-warm measured slower than no warmup at all, which a resident model can't be: "
                       "suspect data (a refresh in flight, or a busy machine).")
    if out and res.strategy_looks_taken:
        said = res.strategy_looks.sentence(*res.strategy_looks_taken, what="first requests with each strategy")
        if said:
            out.append("  " + said)
    return out


def answer(res: ColdStartResult) -> list[str]:
    """Why the first request is slow, by how much, and which warmup fixes it (at most three sentences)."""
    f, out = res.figures, []
    warm = f.get("cold_start/e2e/warm")
    cold_state = next((st for st in ("cold_server", "cold_memory", "cold_disk") if f"cold_start/e2e/{st}" in f), None)
    if cold_state and warm is not None:
        cold, ratio = f[f"cold_start/e2e/{cold_state}"], f.get(f"cold_start/cold_over_warm/{cold_state}")
        what = {"cold_server": "after a server restart", "cold_memory": "with the model out of memory",
                "cold_disk": "with the model file out of the page cache"}[cold_state]
        out.append(f"The first request {what} took {cold.link()}, "
                   f"{ratio.link(RATIO.text(ratio.value)) if ratio is not None else fmt.NA} a warm request "
                   f"({warm.link()})" + ("." if ratio is not None and ratio.estimate.has_ci else
                                         ", too few requests for a CI of that ratio."))
        row = res.by_state[res.by_state["cache_state"] == cold_state] if len(res.by_state) else res.by_state
        if len(row):
            parts = {c: float(row.iloc[0][c]) for c in res.components() if c in row and pd.notna(row.iloc[0][c])}
            if parts and cold.value > 0:
                top = max(parts, key=parts.get)
                name = {"load_s": "loading the model", "prefill_s": "reading the prompt (prefill)",
                        "decode_s": "generating the answer", "thinking_s": "the model's thinking before it answers",
                        "answer_decode_s": "generating the answer after the thinking",
                        "overhead_s": "time outside the server's own account (connection, queueing, set-up)"}[top]
                load = f.get(f"cold_start/load/{cold_state}")
                value = load.link() if top == "load_s" and load is not None else fmt.duration(parts[top])
                # One sentence with the one before it: the answer has room for the warmups' too.
                out[-1] = out[-1].rstrip(".") + f"; most of it is {name}: {value}, {parts[top] / cold.value:.0%} of it."
    out += _preload_answer(res)
    claims = _strategy_claims(res)
    if claims:
        gap, figs, claim = claims[-1]
        none = figs.get("none")
        beaten = [k for k in claim.rows if k not in claim.not_separated]
        if claim.best != "none" and (claim.called or (claim.settled and "none" in beaten)):
            ties = f" (or, equally within ±{claim.min_effect:.0%}, **{'**, **'.join(claim.not_separated)}**)" \
                if claim.not_separated else ""
            out.append(f"After {fmt.duration(gap)} idle, **{claim.best}**{ties} fixes it: the first request takes "
                       f"{figs[claim.best].link()}" + (f" instead of {none.link()} with no warmup." if none is not None
                                                       else "."))
        elif claim.called:
            out.append(f"After {fmt.duration(gap)} idle, no warmup beat doing nothing ({none.link()}): the model was "
                       "still resident.")
        elif claim.settled:
            out.append(f"After {fmt.duration(gap)} idle, the warmup strategies are equal within "
                       f"±{claim.min_effect:.0%}: none changes the first request.")
        else:
            stopped = res.strategy_looks_taken[1] if res.strategy_looks_taken else ""
            why = (" before the time budget was spent" if stopped == "budget" else " at this n")
            out.append(f"After {fmt.duration(gap)} idle, no warmup strategy is separable from the others{why} "
                       f"(the fastest by its median, **{claim.best}**, is not separated from "
                       f"{', '.join(claim.not_separated)}).")
    return out


def _preload_answer(res: ColdStartResult) -> list[str]:
    """After a restart: does preloading at start fix the first request (scheme A at its latest delay against a
    restart with no preload), by the same comparison as the before/after table."""
    p = next((p for p in res.figures.pairs if p.row == "first request after a restart"), None)
    if p is None:
        return []
    before, after = res.figures[p.before], res.figures[p.after]
    r = compare_samples(before.samples, after.samples, "lower", min_effect=MIN_EFFECT)
    delay = after.where.get("delay_s", "")
    if r.verdict == "improved":
        return [f"After a restart, preloading the model at start fixes it for a request {fmt.duration(float(delay))} "
                f"later: {after.link()} instead of {before.link()}."] if delay != "" else []
    return [f"After a restart, preloading at start did not shorten a request {fmt.duration(float(delay))} later "
            f"({after.link()} against {before.link()}): the model was still loading, or unloaded again."] \
        if delay != "" else []


def _scheme_a_lines(res: ColdStartResult) -> list[str]:
    """Scheme A: the user's request after a restart with preload, against a warm request, by its CI."""
    sa = measured(res.scheme_a_trials)
    if sa.empty:
        return [f"- Scheme A not measured: {res.scheme_a_skipped['why']}."] if res.scheme_a_skipped else []
    warm = res.figures.get("cold_start/e2e/warm")
    out = []
    for delay, g in sa.groupby("scheme_a_delay_s"):
        fig = res.figures.get(f"cold_start/e2e/user request/{delay:g}")
        if fig is None:
            continue
        done = g["preload_done_at_send"].mean()
        line = (f"- **Scheme A** (restart, preload at start): a user request {fmt.duration(delay)} after the restart "
                f"took {fig.text()}; the preload had finished before it in {done:.0%} of trials "
                f"(restart → preload done {SECONDS.estimate(est(g['warm_after_s']))})")
        if warm is not None:
            r = stats.ratio(fig.samples, warm.samples)
            line += f"; against a warm request ({warm.text()}) that is {_versus(r, 'as long')}"
        out.append(line + ".")
    return out
