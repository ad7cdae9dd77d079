"""The tuning study's conclusions: the recommendation first, then what the measurements say."""

from __future__ import annotations

import math

from perfkit.core.units import BYTES
from perfkit.analysis.capacity import NOT_SUSTAINED, SUSTAINED
from perfkit.analysis.requests import method_note, noisy_note
from perfkit.analysis.sequential import BUDGET, LAST_LOOK
from perfkit.analysis.series import CANT_TELL
from perfkit.core import fmt
from perfkit.core import settings as SV
from perfkit.report.answer import answer_block

from .params import OBJECTIVES
from .thinking import deploy_note, thinking_lines
from .results import TuningResult
from .tables import pair_rows


def answer(res: TuningResult) -> list[str]:
    """The recommendation first: what to run, by how much it beats today's settings, and how sure that is."""
    if res.winner is None:
        return ["No candidate met the SLOs" + (" and the memory limit" if res.candidates is not None else "") +
                ": nothing to recommend; relax the SLOs or widen the space."]
    tag, what = objective_of(res)
    claim = res.claim
    fig = res.figures.get(f"tuning/{tag}/{res.winner}")
    if claim.called:
        out = [f"Run **{res.winner}**: it is the best for {what} ({fig.link() if fig else ''}), beating every "
               f"other candidate beyond ±{claim.min_effect:.0%}."]
    elif claim.settled and len(claim.not_separated) == len(claim.rows):
        out = [f"No setting tried changes {what}: all {len(claim.rows) + 1} are equal within "
               f"±{claim.min_effect:.0%} (the leader by point estimate, **{res.winner}**, included); today's settings "
               "are as good as any of them."]
    elif claim.settled:
        beaten = [k for k in claim.rows if k not in claim.not_separated]
        out = [f"Run **{res.winner}** or, equally within ±{claim.min_effect:.0%}, "
               f"{', '.join(f'**{k}**' for k in claim.not_separated)}: for {what} they beat "
               f"{', '.join(f'**{k}**' for k in beaten)}."]
    else:
        why = "before the time budget was spent" if res.stopped == BUDGET else "within the planned looks"
        out = [f"**{res.winner}** leads for {what} ({fig.link() if fig else ''}) but is not separated {why} from "
               f"{', '.join(f'**{k}**' for k in claim.not_separated)}: any of them is as good as the data can tell."]
    wanted = {"rate": "request rate", "throughput": "output throughput", "ttft": "time to first token",
              "ttfa": "time to first answer token"}[res.objective if tag != "ttfa" else tag]
    row = next((r for r in pair_rows(res) if r.what.startswith(wanted)), None)
    if row is not None:
        verdict = row.row.verdict
        out.append(f"Against today's settings: {row.what} {row.row.before} → {row.row.after}, "
                   f"{row.row.change_text} (**{verdict}**)." if verdict != "no detectable change at this n" else
                   f"Against today's settings no setting is shown better: {row.what} {row.row.before} → "
                   f"{row.row.after}, {row.row.change_text}, not beyond the smallest change a run can show.")
    return out


def objective_of(res: TuningResult) -> tuple[str, str]:
    """The objective's metric tag and its words, as the analysis judged it."""
    return (res.objective_tag, res.objective_what) if res.objective_tag else OBJECTIVES[res.objective]


def res_concurrency(res: TuningResult) -> int:
    p = ((res.manifest.get("params") or {}).get("studies") or {}).get("tuning") or {}
    return int(p.get("concurrency") or 1)


def conclusions(res: TuningResult) -> str:
    lines = [answer_block(answer(res), res.failures) + "### What the measurements say"]
    w = noisy_note(res.trials)
    if w:
        lines.append("- " + w)
    t = res.candidates
    if len(t):
        n_merged = int(t["status"].str.startswith("merged").sum())
        n_dropped = int(t["status"].str.startswith("dropped").sum() + t["status"].str.startswith("beaten").sum())
        n_out = int(t["status"].str.startswith(("not eligible", "the server could not")).sum())
        space_size = math.prod(len(v) for v in res.space.values()) if res.space else 0
        dims = "; ".join(k + " ∈ {" + ", ".join(str(x).lower() if isinstance(x, bool) else str(x) for x in v) + "}"
                         for k, v in res.space.items())
        lines.append(f"- Searched {len(t)} of the {space_size} combinations of {dims}: "
                     f"{n_dropped} beaten or dropped, {n_merged} merged (the server ran them as another), "
                     f"{n_out} not eligible (the SLOs, the memory limit, or a server that could not run them).")
    if res.claim is not None:
        lines.append(f"- {res.claim.sentence(objective_of(res)[1])}")
        said = res.looks.sentence(_looks_taken(res), res.stopped or LAST_LOOK, what="series of each candidate left")
        if said:
            lines.append("  " + said)
    top, above, tried = res.capacity
    if res.winner and tried:
        c = res_concurrency(res)
        v = res.rate_verdicts
        said = {x: ", ".join(f"{fmt.number(r)}" for r, y in sorted(v.items()) if y == x) for x in set(v.values())}
        what = (f"sustains {fmt.number(top)} req/s inside the SLOs and not {fmt.number(above)}: its capacity lies "
                "between" if math.isfinite(top) and math.isfinite(above) else
                f"sustains at least {fmt.number(top)} req/s inside the SLOs" if math.isfinite(top) else
                "was not shown to sustain any rate tried")
        parts = [f"{k} at {r} req/s" for k, r in ((SUSTAINED, said.get(SUSTAINED)),
                                                  (NOT_SUSTAINED, said.get(NOT_SUSTAINED)),
                                                  ("can't tell (too few requests for the latency trend)",
                                                   said.get(CANT_TELL))) if r]
        lines.append(f"- Capacity: with the tuned settings the server {what} (open loop: requests on a schedule, "
                     f"latency timed from it, around what its {c} clients drove: {'; '.join(parts)}).")
    if res.cost:
        lines.append("- Cost at the stated clients' throughput: " + "; ".join(
            f"{'tuned' if k == 'after' else 'today'} ${v:.2f} per million output tokens" for k, v in res.cost.items())
                     + " (from the GPU-hour price in the parameters).")
    cold = res.cold
    if cold and cold.get("cold_e2e") is not None:
        f = cold["cold_e2e"]
        lines.append(f"- Warmup: with the tuned settings the first request after a restart takes {f.text()} against "
                     f"{fmt.duration(cold['warm_e2e_s'])} for a warm one at the stated clients (loading the model: "
                     f"{fmt.duration(cold['load_s'])}); keeping it loaded costs {BYTES.text(cold['rss_bytes'])} of server "
                     "memory. Preload it at start "
                     f"and set {SV.name_of(SV.KEEP_ALIVE)} long enough to span your idle gaps (or -1) if that memory is free. "
                     f"A proxy in front needs `proxy_read_timeout` ≥ {cold['proxy_read_timeout_s']} s (three times "
                     f"the slowest cold start measured, {fmt.duration(cold['worst_cold_s'])}).")
    lines += thinking_lines(res, res_concurrency(res))
    if res.files:
        lines.append("- To deploy: " + ", ".join(f"[{n}]({p})" for n, p in res.files.items()) + " (each says which run "
                     "found it)." + deploy_note(res.winner_settings))
    lines.append("")
    lines.append(method_note(res.manifest))
    return "\n".join(lines)


def _looks_taken(res: TuningResult) -> list[int]:
    t = res.candidates
    return list(range(1, int(t["looks"].max()) + 1)) if len(t) and t["looks"].max() else []
