"""A comparison reduced to what a CI step needs: did the run regress against its baseline?

The verdicts are the comparison's own (runs as the unit where replicated, the minimum effect, FDR within each
figure's family): the gate only chooses which figures count and turns the answer into an exit code —

* ``0`` (pass): every gated figure was compared and none is worse;
* ``1`` (regression): at least one gated figure is worse (its CI beyond the minimum effect, its test and its
  FDR-adjusted q both saying so);
* ``2`` (inconclusive): the runs are not comparable (another host or GPUs, another server kind or version, another
  model file, another workload), no gated figure could be compared, or a run was noisy or is still being measured.

A regression on a noisy machine is inconclusive, not a pass: the gate never lets noise decide either way.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from perfkit.analysis.verdicts import IMPROVED, NO_CHANGE, NOT_COMPARABLE, WORSE, Row
from perfkit.compare.comparison import Comparison, compare
from perfkit.compare.runs import Run, load
from perfkit.core import fmt

PASS, REGRESSION, INCONCLUSIVE = 0, 1, 2
STATUS = {PASS: "pass", REGRESSION: "regression", INCONCLUSIVE: "inconclusive"}


# ---- what makes two runs comparable -------------------------------------------------------------------------
def fingerprint(run: Run) -> dict[str, Any]:
    """What must be equal for two runs' figures to say something about a change: the host (CPU, cores, memory,
    GPUs), the server kind and version, each model's file digest, and each study's workload (its parameters
    other than the settings under test). Settings are what a gate is for, so they are not in it."""
    m = next(iter(run.manifests.values()), {})
    h = m.get("host") or {}
    b = m.get("backend") or {}
    models: dict[str, Any] = {}
    for man in run.manifests.values():
        for name, f in (man.get("models") or {}).items():
            if isinstance(f, dict) and f.get("digest"):
                models[name] = f["digest"]
    workload = {}
    for s, man in sorted(run.manifests.items()):
        p = ((man.get("params") or {}).get("studies") or {}).get(s)
        if isinstance(p, dict):
            workload[s] = {k: v for k, v in p.items() if k not in ("settings", "baseline")}
    return {"host": {"cpu": h.get("cpu"), "cores": h.get("cpu_cores_logical"),
                     "memory_bytes": h.get("memory_total_bytes"),
                     "gpus": [g.get("name") for g in h.get("gpus") or [] if isinstance(g, dict)]},
            "server": {"kind": b.get("backend"), "version": b.get("version")},
            "models": models, "workload": workload}


def fingerprint_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, one line each (host, server, model digest, workload)."""
    out = []
    for part in ("host", "server"):
        for k in sorted(set(a.get(part) or {}) | set(b.get(part) or {})):
            va, vb = (a.get(part) or {}).get(k), (b.get(part) or {}).get(k)
            if va != vb:
                out.append(f"{part} {k}: {_short(va)} → {_short(vb)}")
    ma, mb = a.get("models") or {}, b.get("models") or {}
    for name in sorted(set(ma) & set(mb)):
        if ma[name] != mb[name]:
            out.append(f"model file of {name}: digest {str(ma[name])[:12]}… → {str(mb[name])[:12]}…")
    wa, wb = a.get("workload") or {}, b.get("workload") or {}
    for s in sorted(set(wa) & set(wb)):
        for k in sorted(set(wa[s]) | set(wb[s])):
            if wa[s].get(k) != wb[s].get(k):
                out.append(f"{s} {k}: {_short(wa[s].get(k))} → {_short(wb[s].get(k))}")
    return out


def _short(v: Any) -> str:
    t = v if isinstance(v, str) else json.dumps(v, default=str)
    return t if len(t) <= 60 else t[:57] + "…"


# ---- the gate ----------------------------------------------------------------------------------------------
@dataclass
class Gated:
    """One gated figure: its comparison row and the minimum effect it was gated with."""

    row: Row
    min_effect: float

    @property
    def study(self) -> str:
        return self.row.key.split("/", 1)[0]

    @property
    def name(self) -> str:
        return (f"{self.row.headline}: " if self.row.headline else "") + self.row.label

    @property
    def could_tell(self) -> bool:
        """Whether this figure, at its n, could have shown a change of the minimum effect (a CI, a test that can
        reach significance); a row "not measurable at this n" could not."""
        r = self.row
        if r.verdict in (IMPROVED, WORSE):
            return True
        return r.verdict == NO_CHANGE and "not measurable" not in r.reason and math.isfinite(r.ratio.lo) \
            and math.isfinite(r.ratio.hi)

    def line(self) -> str:
        r = self.row
        also = f"; could also be: {'; '.join(r.confounds)}" if r.confounds else ""
        return f"{self.study} · {self.name}: {r.before} → {r.after}, {r.change_text}; {r.verdict} ({r.reason}){also}"


@dataclass
class GateResult:
    """The gate's answer: ``code`` (0, 1, 2), the gated rows, the regressions, why it is inconclusive."""

    baseline: str
    run: str
    code: int
    gated: list[Gated]
    regressions: list[Gated]
    inconclusive: list[str]
    differences: list[str]
    comparison: Comparison
    patterns: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return STATUS[self.code]

    def headline(self) -> str:
        if self.code == REGRESSION:
            return f"REGRESSION: {len(self.regressions)} of {len(self.gated)} gated figures got worse"
        if self.code == INCONCLUSIVE:
            return "INCONCLUSIVE: " + (self.inconclusive[0] if self.inconclusive else "nothing could be compared")
        return f"PASS: none of {len(self.gated)} gated figures got worse"

    def text(self) -> str:
        """For the terminal."""
        lines = [f"perfkit gate: {Path(self.baseline).name} (baseline) → {Path(self.run).name}", self.headline()]
        lines += [f"  worse   {g.line()}" for g in self.regressions]
        lines += [f"  ⚠ {w}" for w in self.inconclusive[1:]]
        if self.differences:
            lines.append("  what differs in the manifests: " + "; ".join(self.differences[:6]))
        return "\n".join(lines)

    def markdown(self) -> str:
        """A CI step summary (GitHub's $GITHUB_STEP_SUMMARY takes it as is)."""
        icon = {PASS: "✅", REGRESSION: "❌", INCONCLUSIVE: "⚠️"}[self.code]
        lines = [f"## {icon} perfkit gate: {self.headline()}", "",
                 f"Baseline `{Path(self.baseline).name}` → run `{Path(self.run).name}`; "
                 f"{self.comparison.how()}", ""]
        for w in self.inconclusive:
            lines.append(f"- ⚠️ {w}")
        if self.differences:
            lines.append("- **What differs in the manifests**: " + "; ".join(self.differences[:10]))
        if lines[-1]:
            lines.append("")
        lines += ["| figure | baseline | run | change | verdict |", "|---|---|---|---|---|"]
        for g in sorted(self.gated, key=lambda g: g.row.verdict != WORSE):
            r = g.row
            lines.append(f"| {_md(g.study + ' · ' + g.name)} | {_md(r.before)} | {_md(r.after)} | {_md(r.change_text)} "
                         f"| {'**' + r.verdict + '**' if r.verdict == WORSE else r.verdict} |")
        return "\n".join(lines) + "\n"

    def junit(self) -> str:
        """JUnit XML: one test case per gated figure (a regression is a failure, a figure that could not be
        compared is skipped)."""
        cases = []
        for g in self.gated:
            r = g.row
            inner = ""
            if r.verdict == WORSE:
                inner = f"<failure message={quoteattr(g.line())}>{escape(g.line())}</failure>"
            elif r.verdict == NOT_COMPARABLE:
                inner = f"<skipped message={quoteattr(r.reason)}/>"
            cases.append(f"<testcase classname={quoteattr('perfkit.' + g.study)} name={quoteattr(g.name)}>"
                         f"{inner}<system-out>{escape(g.line())}</system-out></testcase>")
        failures = sum(g.row.verdict == WORSE for g in self.gated)
        skipped = sum(g.row.verdict == NOT_COMPARABLE for g in self.gated)
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<testsuites><testsuite name="perfkit gate" tests="{len(self.gated)}" failures="{failures}" '
                f'skipped="{skipped}" errors="0">' + "".join(cases) + "</testsuite></testsuites>\n")

    def as_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "run": self.run, "code": self.code, "status": self.status,
                "headline": self.headline(), "patterns": self.patterns, "inconclusive": self.inconclusive,
                "differences": self.differences,
                "gated": [{"key": g.row.key, "figure": g.name, "before": g.row.before, "after": g.row.after,
                           "change": g.row.change_text, "change_pct": fmt.finite(g.row.change_pct),
                           "change_lo_pct": fmt.finite(g.row.change_lo_pct), "change_hi_pct": fmt.finite(g.row.change_hi_pct),
                           "verdict": g.row.verdict, "why": g.row.reason, "q_value": fmt.finite(g.row.q_value),
                           "min_effect": g.min_effect} for g in self.gated]}


def _md(t: Any) -> str:
    return str(t).replace("|", "\\|").replace("\n", " ")


def _selected(row: Row, patterns: list[str]) -> bool:
    """A row is gated when a pattern matches its figure's tag (``ttft*``), its key (``cold_start/ttft*``) or its
    headline (``warm start``)."""
    parts = row.key.split("/")
    tag = parts[1] if len(parts) > 1 else row.key
    return any(fnmatch.fnmatchcase(tag, p) or fnmatch.fnmatchcase(row.key, p)
               or (row.headline and fnmatch.fnmatchcase(row.headline, p)) for p in patterns)


def gate(baseline: str | Path, run: str | Path, *, figures: list[str] | None = None,
         min_effects: dict[str, float] | None = None, default_min_effect: float | None = None,
         allow_other_fingerprint: bool = False) -> GateResult:
    """Gate ``run`` against ``baseline`` (two run directories, or a saved baseline's directory).

    ``figures``: glob patterns on the figures' tags, keys or headlines (default: every figure both measured).
    ``min_effects``: pattern → the smallest change that counts for the figures it matches (the first match
    wins; others get ``default_min_effect``, else the comparison's own). ``allow_other_fingerprint``: compare
    runs of another host, server version, model file or workload anyway (their differences are still listed)."""
    patterns = list(figures or ["*"])
    a, b = load(baseline), load(run)
    differences = fingerprint_differences(fingerprint(a), fingerprint(b))
    effects: dict[float | None, Comparison] = {}

    def comparison(eff: float | None) -> Comparison:
        if eff not in effects:
            effects[eff] = compare(baseline, run, min_effect=eff)
        return effects[eff]

    base = comparison(default_min_effect)
    gated: list[Gated] = []
    for row in base.rows:
        if not _selected(row, patterns):
            continue
        eff = next((v for p, v in (min_effects or {}).items() if _selected(row, [p])), default_min_effect)
        c = comparison(eff)
        r = next((x for x in c.rows if x.key == row.key), row)
        gated.append(Gated(r, c.min_effect))
    inconclusive: list[str] = []
    if differences and not allow_other_fingerprint:
        inconclusive.append("the runs are not comparable: " + "; ".join(differences[:4])
                            + ("; …" if len(differences) > 4 else "")
                            + " (--allow-other-fingerprint gates them anyway)")
    if not gated:
        inconclusive.append("no figure matching " + ", ".join(patterns) + " was measured by both runs")
    elif all(g.row.verdict == NOT_COMPARABLE for g in gated):
        inconclusive.append("none of the gated figures is comparable: " + gated[0].row.reason)
    elif not any(g.could_tell for g in gated):
        inconclusive.append(f"too few requests or runs to call anything: none of the {len(gated)} gated figures "
                            "could show a change of its minimum effect at its n (repeat the runs, or gate fewer "
                            "figures with more requests)")
    for w in base.warnings:
        if "still being measured" in w or "no figure in common" in w or "same run" in w:
            inconclusive.append(w.replace("**", ""))
    regressions = [g for g in gated if g.row.verdict == WORSE]
    noisy = [g for g in regressions if any(c.startswith("a noisy machine") for c in g.row.confounds)]
    if noisy and len(noisy) == len(regressions):  # each figure's own requests decide, not the run's noisiest
        inconclusive.append(f"{noisy[0].study} · {noisy[0].name} got worse on a noisy machine ("
                            + next(c for c in noisy[0].row.confounds if c.startswith("a noisy machine"))
                            + "): the change can't be told from the other load")
    if inconclusive:
        code = INCONCLUSIVE
    elif regressions:
        code = REGRESSION
    else:
        code = PASS
    if code == REGRESSION:  # the clean regressions decide; a noisy one is listed after them, with its caveat
        regressions = [g for g in regressions if g not in noisy] + noisy
    return GateResult(str(baseline), str(run), code, gated, regressions if code == REGRESSION else [], inconclusive,
                      differences, base, patterns)


__all__ = ["PASS", "REGRESSION", "INCONCLUSIVE", "GateResult", "Gated", "gate", "fingerprint",
           "fingerprint_differences", "IMPROVED", "NO_CHANGE"]
