"""Two runs, figure by figure: what changed and whether the change is real (see
:mod:`perfkit.analysis.verdicts` for the statistics), what differs between their manifests, and what else
could explain a row.

A pair of runs is compared once: ``perfkit compare`` writes the :class:`Comparison` to ``comparison.json``
(:meth:`Comparison.to_json`, a versioned model), and its page, the compare notebook, reads that file back
(:meth:`Comparison.read`) rather than comparing again, so the terminal and the page show the same rows."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from perfkit.analysis import stats, verdicts
from perfkit.analysis.figures import Figure, dumps
from perfkit.analysis.requests import noisy_text
from perfkit.analysis.verdicts import IMPROVED, NO_CHANGE, NOT_COMPARABLE, WORSE, Row
from perfkit.compare import manifests
from perfkit.compare.before_after import BeforeAfter, table_html
from perfkit.compare.manifests import Difference, show
from perfkit.compare.runs import Run, load
from perfkit.core.errors import PerfkitError

# A tuning guide's before/after rows, first when both runs have them (figures carry these headline names).
BEFORE_AFTER_ROWS = ("cold start", "warm start", "memory", "GPU utilization")
OUTPUT_LENGTH = "num_predict"  # the workload key a study may change by design between runs
FILE_NAME = "comparison.json"
SCHEMA_VERSION = 1


@dataclass
class Comparison:
    """Run A (before) against run B (after): ``rows`` for the figures both have (the before/after table's four first),
    ``only_a``/``only_b`` for the rest, ``differences`` from the manifests, run-wide ``confounds`` and
    ``warnings`` (damaged data, a run compared with itself, a run still being measured)."""

    run_a: str
    run_b: str
    rows: list[Row]
    only_a: list[Figure]
    only_b: list[Figure]
    differences: list[Difference]
    confounds: list[str]
    warnings: list[str]
    info_a: dict[str, Any] = field(default_factory=dict)
    info_b: dict[str, Any] = field(default_factory=dict)
    mode: str = "requests"
    min_effect: float = verdicts.MIN_EFFECT
    noisy_runs: list[str] = field(default_factory=list)
    noisy_studies: list[str] = field(default_factory=list)

    @property
    def name_a(self) -> str:
        return Path(self.run_a).name

    @property
    def name_b(self) -> str:
        return Path(self.run_b).name

    def counts(self) -> dict[str, int]:
        """Verdicts over the rows; a noisy run's rows are not counted as improved or worse."""
        out = {v: 0 for v in verdicts.VERDICTS}
        for r in self.rows:
            v = r.verdict
            if r.key.split("/", 1)[0] in self.noisy_studies and v in (IMPROVED, WORSE):
                v = NO_CHANGE
            out[v] += 1
        return out

    def table(self) -> pd.DataFrame:
        """One row per figure both runs have, grouped by study: before, after, ratio, change, verdict, why."""
        rows = [{"study": r.key.split("/", 1)[0], "figure": (f"{r.headline}: " if r.headline else "") + r.label,
                 "before (A)": r.before, "after (B)": r.after, "after / before": r.ratio_text,
                 "change": r.change_text, "verdict": r.verdict, "why": r.reason,
                 "could also be": "; ".join(r.confounds) or "—"} for r in self.rows]
        return pd.DataFrame(rows) if rows else pd.DataFrame()

    def table_html(self, table_id: str = "comparison") -> str:
        """Every row, grouped by study (the before/after table's four first), escaped; sortable by any column and filterable
        by text (the site's own script does both; without it the table still reads)."""
        import html as h

        head = ["figure", "before (A)", "after (B)", "after / before", "change", "verdict", "why", "could also be"]
        out = [f'<p><input class="table-filter" type="search" data-table="{table_id}" '
               f'placeholder="filter the {len(self.rows)} rows (e.g. ttft, worse, NUM_PARALLEL)" '
               f'aria-label="filter the comparison rows"></p>',
               f'<div class="perfkit-table"><table id="{table_id}" class="dataframe perfkit sortable"><thead><tr>'
               + "".join(f"<th>{c}</th>" for c in head) + "</tr></thead><tbody>"]
        by_study: dict[str, list[Row]] = {}
        for r in self.rows:
            by_study.setdefault("headline" if r.headline in BEFORE_AFTER_ROWS else r.key.split("/", 1)[0], []).append(r)
        for study, rows in by_study.items():
            out.append(f'<tr class="group"><th colspan="{len(head)}">{h.escape(study.replace("_", " "))}</th></tr>')
            for r in rows:
                cells = [(f"{r.headline}: " if r.headline else "") + r.label, r.before, r.after, r.ratio_text,
                         r.change_text, r.verdict, r.reason, "; ".join(r.confounds) or "—"]
                cls = f' class="verdict-{r.verdict.split()[0]}"'
                out.append("<tr>" + "".join(f"<td{cls if i == 5 else ''}>{h.escape(str(c))}</td>"
                                            for i, c in enumerate(cells)) + "</tr>")
        out.append("</tbody></table></div>")
        return "".join(out)

    def before_after(self) -> list[BeforeAfter]:
        """The rows of a tuning guide's before/after table both runs measured (cold start, warm start, memory, GPU
        utilization), A as before and B as after."""
        return [BeforeAfter(r.key.split("/", 1)[0], f"{r.headline} — {r.key.split('/', 1)[0].replace('_', ' ')}",
                            "", "", r) for r in self.rows if r.headline in BEFORE_AFTER_ROWS]

    def before_after_html(self) -> str:
        """The before/after table (:meth:`before_after`) with how to read it, or a sentence when the runs share
        none of its rows."""
        rows = self.before_after()
        if not rows:
            return ("<p>The two runs share none of the before/after rows (cold start, warm start, memory, GPU "
                    "utilization): they measured different studies or conditions.</p>")
        return table_html(rows, self.min_effect)

    def differences_html(self, collapse_after: int = 12) -> str:
        """What differs between the manifests as a table for people: every row (no truncation), grouped by kind,
        the rest folded behind a summary when there are many."""
        import html as h

        if not self.differences:
            return "<p>Nothing in the manifests differs (same settings, models, engine, host and parameters).</p>"

        def rows(ds: list[Difference]) -> str:
            return "".join(f"<tr><td>{h.escape(d.category)}</td><td>{h.escape(d.what)}</td><td>{h.escape(show(d.a))}"
                           f"</td><td>{h.escape(show(d.b))}</td></tr>" for d in ds)

        head = ('<div class="perfkit-table"><table class="dataframe perfkit"><thead><tr><th>kind</th><th>what</th>'
                "<th>A (before)</th><th>B (after)</th></tr></thead><tbody>")
        first, rest = self.differences[:collapse_after], self.differences[collapse_after:]
        out = head + rows(first) + "</tbody></table></div>"
        if rest:
            out += (f"<details><summary>{len(rest)} more differences ({', '.join(sorted({d.category for d in rest}))})"
                    f"</summary>{head}{rows(rest)}</tbody></table></div></details>")
        return out

    def only_html(self) -> str:
        """The figures only one run has: a count per study in view, the names folded behind it."""
        import html as h

        if not self.only_a and not self.only_b:
            return "<p>Both runs measured the same figures.</p>"
        out = []
        for who, name, figs in (("A", self.name_a, self.only_a), ("B", self.name_b, self.only_b)):
            if not figs:
                continue
            by: dict[str, list[Figure]] = {}
            for f in figs:
                by.setdefault(f.study, []).append(f)
            counts = ", ".join(f"{len(v)} of {k.replace('_', ' ')}" for k, v in by.items())
            items = "".join(f"<li>{h.escape(f.label)}: {h.escape(f.text())}</li>" for f in figs)
            out.append(f"<details><summary><b>Only in {who}</b> ({h.escape(name)}): {len(figs)} figure"
                       f"{'s' if len(figs) != 1 else ''} ({h.escape(counts)})</summary><ul>{items}</ul></details>")
        return "".join(out)

    def summary(self) -> str:
        """Markdown: which runs, how they were compared, what differs, the headline verdicts and caveats."""
        lines = [f"**A (before)**: `{self.name_a}` ({_when(self.info_a)}) · **B (after)**: `{self.name_b}` "
                 f"({_when(self.info_b)})", ""]
        for w in self.warnings:
            lines.append(f"- ⚠ {w}")
        for r in self.noisy_runs:
            lines.append(f"- ⚠ **Noisy run**: {r}. Those studies' rows are not counted as improved or worse below.")
        for c in self.confounds:
            lines.append(f"- ⚠ **Confound**: {c}")
        lines.append("- **How**: " + self.how())
        lines.append("- **Reading a ratio**: after / before, with its 95% CI. For a median it is the median of every "
                     "after ÷ before pair of requests (Hodges–Lehmann), so it need not equal the two medians' quotient "
                     "(two medians a few percent apart can give a ratio well away from 1 when the requests spread "
                     "widely, as a mix of fast and slow ones does); a tail (p90, p99) is "
                     "the two percentiles' quotient. *Improved* or *worse* needs the whole CI beyond the minimum effect.")
        if self.differences:
            shown = [d for d in self.differences if d.category in ("settings", "models", "quantization", "engine",
                                                                   "host", "study parameters")] or self.differences
            lines.append("- **What differs**: " + "; ".join(
                f"{d.what} {show(d.a)} → {show(d.b)}" for d in shown[:8])
                + (f"; and {len(self.differences) - len(shown[:8])} more (below)."
                   if len(self.differences) > len(shown[:8]) else "."))
        else:
            lines.append("- **What differs**: nothing in the manifests (same settings, models, engine, host and "
                         "parameters): any change below is run-to-run variation or something perfkit does not record.")
        for r in self.rows:
            if r.headline:
                # "Warm start (time to first token (warm))", never "Decode speed (decode speed (warm))".
                what = (f"**{r.label[:1].upper() + r.label[1:]}**" if r.label.lower().startswith(r.headline.lower())
                        else f"**{r.headline[:1].upper() + r.headline[1:]}** ({r.label})")
                lines.append(f"- {what}: {r.before} → {r.after}; "
                             f"{r.ratio_text}: **{r.verdict}** ({r.reason})"
                             + (f"; could also be: {'; '.join(r.confounds)}" if r.confounds else "") + ".")
        c = self.counts()
        lines.append(f"- Over all {len(self.rows)} figures both runs measured: {c[IMPROVED]} improved, {c[WORSE]} "
                     f"worse, {c[NO_CHANGE]} with no detectable change at their n"
                     + (f", {c[NOT_COMPARABLE]} not comparable" if c[NOT_COMPARABLE] else "")
                     + (f"; {len(self.only_a)} only in A, {len(self.only_b)} only in B." if self.only_a or self.only_b
                        else "."))
        return "\n".join(lines)

    def terminal_summary(self, max_rows: int = 12) -> str:
        """Plain text for the terminal: the warnings, the verdict counts and the rows called improved or worse."""
        strip = lambda t: t.replace("**", "").replace("`", "")  # noqa: E731
        lines = [f"A (before): {self.name_a}  →  B (after): {self.name_b}"]
        lines += [f"⚠ {strip(w)}" for w in self.warnings] + [f"⚠ noisy run: {strip(r)}" for r in self.noisy_runs]
        c = self.counts()
        lines.append(f"{len(self.rows)} figures compared ({self.mode}): {c[IMPROVED]} improved, {c[WORSE]} worse, "
                     f"{c[NO_CHANGE]} no detectable change at their n"
                     + (f", {c[NOT_COMPARABLE]} not comparable" if c[NOT_COMPARABLE] else ""))
        called = [r for r in self.rows if r.called and r.key.split("/", 1)[0] not in self.noisy_studies]
        for r in called[:max_rows]:
            lines.append(f"  {r.verdict:8s} {r.key.split('/', 1)[0]}: {r.label}  {r.before} → {r.after}  "
                         f"({r.change_text})")
        if len(called) > max_rows:
            lines.append(f"  … and {len(called) - max_rows} more (see the page)")
        return "\n".join(lines)

    def how(self) -> str:
        if self.mode == "runs":
            return ("runs are the unit (both sides have ≥ 3 replicate runs): the ratio of the runs' geometric "
                    "means with a t-interval over runs (pooled with as many runs a side, else Welch), so run-to-run "
                    "variation is inside every CI.")
        return (f"a comparison of single runs: requests within one run are not independent samples of the next, "
                f"so a change is called only when its CI lies entirely beyond ±{self.min_effect:.0%} (the spread "
                "measured between two runs of the same parameters); repeat each run (`perfkit run --repeat 3`) to "
                "compare runs instead.")

    def method(self) -> str:
        return ("Ratios are after / before. " + self.how()[0].upper() + self.how()[1:] + " A median or "
                "mean with per-request samples: Hodges–Lehmann estimate (the median of every after ÷ before pair of "
                "requests, so it need not equal the ratio of the two medians) with the Moses distribution-free 95% CI, "
                "Mann–Whitney p-value. A tail (p90, p99): the ratio of the two percentiles, failed requests counted as "
                "beyond the limit, tested by how many requests of one run lie beyond the other's percentile × (1 + the "
                "minimum effect) against the exact count expected if nothing changed. The failed share: the "
                "difference in percentage points, Boschloo's exact test. A series' throughput has one CI per run: the "
                "ratio's CI and p-value come from both CIs on the log scale. A single reading (resident memory) has "
                "no CI and never gets a verdict. Across the rows of each figure (one metric over its conditions), "
                "p-values are adjusted for the false-discovery rate (Benjamini–Hochberg, q ≤ 0.05): a row is "
                "improved or worse only when its test says so and its q does. Rows whose workload differs (prompt "
                "size, concurrency, SLOs, the model file) are not comparable; where only the output length differs, "
                "a figure that does not depend on it (TTFT, load, decode speed, memory) is compared as usual and one "
                "that does (end-to-end time, throughput) is compared with that difference named beside it. "
                f"A row is flagged noisy when ≥ {manifests.NOISY_SHARE:.0%} of its requests in either run ran while "
                "other processes used the machine; a noisy run's rows are not counted in the summary.")

    def as_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "run_a": self.run_a, "run_b": self.run_b, "counts": self.counts(),
                "mode": self.mode, "min_effect": self.min_effect, "rows": [r.as_dict() for r in self.rows],
                "only_a": [f.as_dict() for f in self.only_a], "only_b": [f.as_dict() for f in self.only_b],
                "differences": [asdict(d) for d in self.differences], "confounds": self.confounds,
                "warnings": self.warnings, "noisy_runs": self.noisy_runs, "noisy_studies": self.noisy_studies,
                "info_a": self.info_a, "info_b": self.info_b}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Comparison":
        """A comparison as :meth:`as_dict` wrote it (what it derives, such as the counts, is derived again)."""
        return cls(d["run_a"], d["run_b"], [Row.from_dict(r) for r in d["rows"]],
                   [Figure.from_dict(f) for f in d.get("only_a") or []],
                   [Figure.from_dict(f) for f in d.get("only_b") or []],
                   [Difference(**x) for x in d.get("differences") or []], list(d.get("confounds") or []),
                   list(d.get("warnings") or []), dict(d.get("info_a") or {}), dict(d.get("info_b") or {}),
                   d.get("mode") or "requests", float(d["min_effect"]), list(d.get("noisy_runs") or []),
                   list(d.get("noisy_studies") or []))

    def to_json(self, path: str | Path) -> Path:
        """Write ``comparison.json``: strict JSON (NaN as null, a censored +inf as "inf"), so any reader takes it
        and :meth:`read` gives this comparison back."""
        path = Path(path)
        path.write_text(dumps(self.as_dict(), indent=2))
        return path

    @classmethod
    def read(cls, path: str | Path) -> "Comparison":
        """A ``comparison.json`` that :meth:`to_json` wrote; PerfkitError, naming the file, when it is missing, not
        a comparison, or of a newer schema than this perfkit reads."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise PerfkitError(f"{path}: no comparison to read ({e}); `perfkit compare A B` writes one") from None
        if not isinstance(d, dict) or "rows" not in d or "run_a" not in d:
            raise PerfkitError(f"{path}: not a perfkit comparison file")
        if "schema_version" not in d:
            raise PerfkitError(f"{path}: written by an older perfkit; compare the runs again (`perfkit compare A B`)")
        if int(d.get("schema_version") or 0) > SCHEMA_VERSION:
            raise PerfkitError(f"{path}: schema version {d['schema_version']} is newer than this perfkit reads "
                               f"({SCHEMA_VERSION}); upgrade perfkit")
        return cls.from_dict(d)


def _when(info: dict) -> str:
    return ", ".join(x for x in (info.get("params_name"), info.get("created_utc")) if x) or "no run.json"


def _workload_diff(fa: Figure, fb: Figure) -> list[str]:
    keys = sorted(set(fa.workload) | set(fb.workload))
    return [f"{k} {fa.workload.get(k, '(absent)')} → {fb.workload.get(k, '(absent)')}" for k in keys
            if fa.workload.get(k) != fb.workload.get(k)]


def compare_figures(fa: Figure, fb: Figure, *, runs_mode: bool, min_effect: float,
                    confidence: float = stats.CONFIDENCE) -> Row:
    """One figure of two runs, as :func:`perfkit.analysis.verdicts.compare_figure_pair` compares it."""
    row = verdicts.compare_figure_pair(fa, fb, runs_mode=runs_mode, min_effect=min_effect, confidence=confidence)
    row.key = fb.key
    row.label = fb.label if fa.label == fb.label else f"{fa.label} → {fb.label}"
    row.headline = fb.headline or fa.headline
    return row


def compare(run_a: str | Path, run_b: str | Path, *, confidence: float = stats.CONFIDENCE,
            min_effect: float | None = None) -> Comparison:
    """Run A (before) against run B (after), from their figures only (no server, no trials).

    PerfkitError when either is not a perfkit run, or a manifest or figures file is missing or damaged.
    ``min_effect``: the smallest change a comparison of single runs may call (default
    :data:`perfkit.analysis.verdicts.MIN_EFFECT`)."""
    a, b = load(run_a), load(run_b)
    eff = verdicts.MIN_EFFECT if min_effect is None else float(min_effect)
    fa, fb = a.all_figures(), b.all_figures()
    # A per-request share (failed) is compared by its pooled counts in either mode: it does not decide the mode.
    runs_mode = all(len(f.replicates) >= verdicts.MIN_REPLICATES for f in list(fa.values()) + list(fb.values())
                    if (f.samples or f.replicates) and f.m.stat != "share") and bool(fa) and bool(fb)
    host = manifests.run_confounds(a, b)
    rows = []
    for key in [k for k in fb if k in fa]:
        row = compare_figures(fa[key], fb[key], runs_mode=runs_mode, min_effect=eff, confidence=confidence)
        row.confounds = (["another host"] if host else []) + manifests.row_confounds(fa[key], fb[key], a, b)
        diff = _workload_diff(fa[key], fb[key])
        if diff and all(d.startswith(OUTPUT_LENGTH + " ") for d in diff):
            # Only the output length differs: compared, and said, never refused row by row.
            said = (f"output length differs ({diff[0].replace(OUTPUT_LENGTH, 'tokens asked for', 1)})")
            if fb[key].m.per_output:
                row.confounds.append(f"{said}, which this figure depends on")
            else:
                row.reason += f"; the {said} does not enter this figure"
            diff = []
        why_not = diff + [c for c in row.confounds if c.startswith("another model file")]
        if why_not:
            row.verdict, row.reason, row.p_value = NOT_COMPARABLE, "; ".join(why_not), math.nan
        rows.append(row)
    verdicts.fdr_by_family(rows)
    order = {h: i for i, h in enumerate(BEFORE_AFTER_ROWS)}
    rows.sort(key=lambda r: (0, order[r.headline]) if r.headline in order else (1, 0) if r.headline else (2, 0))
    warnings = a.warnings + b.warnings + _run_warnings(a, b, rows)
    noisy = [f"{w} ({r.name}): {t}" for w, r in (("A", a), ("B", b)) if (t := _noisy(r)[0])]
    noisy_studies = sorted(set(_noisy(a)[1]) | set(_noisy(b)[1]))
    return Comparison(str(a.path), str(b.path), rows, [fa[k] for k in fa if k not in fb],
                      [fb[k] for k in fb if k not in fa], manifests.differences(a, b), host, warnings, a.info, b.info,
                      "runs" if runs_mode else "requests", eff, noisy, noisy_studies)


def _noisy(run: Run) -> tuple[str, list[str]]:
    """The studies of a run whose requests were noisy at least :data:`manifests.NOISY_SHARE` of the time, with
    the count its report shows ('cold start: 16 of 53 requests ran while …'); '' when none."""
    out = []
    for study, figs in run.figures.items():
        c = figs.noisy
        if c and c.get("requests") and c["noisy"] / c["requests"] >= manifests.NOISY_SHARE:
            out.append((study, f"{study.replace('_', ' ')}: {noisy_text(c)}"))
    return "; ".join(t for _, t in out), [s for s, _ in out]


def _run_warnings(a: Run, b: Run, rows: list[Row]) -> list[str]:
    out = []
    if a.path.resolve() == b.path.resolve():
        out.append(f"**A and B are the same run** ({a.name}): every row compares the run with itself.")
    if not rows:
        out.append("**The two runs have no figure in common**: nothing can be compared (different studies, models "
                   "or settings).")
    for who, r in (("A", a), ("B", b)):
        live = [s for s, st in r.status().items() if st == "running"]
        if live:
            out.append(f"**{who} ({r.name}) is still being measured** ({', '.join(live)}): its figures may change.")
        bad = [s for s, st in r.status().items() if st.startswith(("failed", "interrupted"))]
        if bad:
            out.append(f"{who} ({r.name}): {', '.join(bad)} did not finish; its figures cover what was measured.")
    return out
