"""The before/after table a tuning guide ends with, built from figures only.

Inside one run, each study names its pairs (:class:`perfkit.analysis.figures.Pair`: no warmup against the fastest
warmup, the first setting against the leading one); between two runs, the headline figures of both. Every row is
compared as ``perfkit compare`` compares a figure (:func:`perfkit.analysis.verdicts.compare_figure_pair`), with
the minimum effect a single run needs, so this table, the study's report and a comparison can't disagree.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from perfkit.analysis import verdicts
from perfkit.analysis.figures import FILE_NAME, FigureSet
from perfkit.analysis.verdicts import Row


@dataclass
class BeforeAfter:
    """One row: what is compared (``what``), each side's condition in words and the comparison (``row``)."""

    study: str
    what: str
    before_is: str
    after_is: str
    row: Row


def in_run(run_dir: str | Path, min_effect: float = verdicts.MIN_EFFECT) -> list[BeforeAfter]:
    """Every study's before/after pairs in a run, in study order; [] when no study named one."""
    out = []
    for d in sorted(Path(run_dir).iterdir()) if Path(run_dir).is_dir() else []:
        try:
            figs = FigureSet.read(d / FILE_NAME)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for p in figs.pairs:
            fa, fb = figs[p.before], figs[p.after]
            runs = len(fa.replicates) >= verdicts.MIN_REPLICATES and len(fb.replicates) >= verdicts.MIN_REPLICATES
            row = verdicts.compare_figure_pair(fa, fb, runs_mode=runs, min_effect=min_effect)
            out.append(BeforeAfter(d.name, p.row, p.before_is, p.after_is, row))
    return out


HOW_TO_READ = ("after / before is a ratio with its 95% CI: below 1 is less (faster, smaller), above 1 is more. "
               "For a median it is the median of every after ÷ before pair of requests (Hodges–Lehmann), so it need "
               "not equal the quotient of the two medians. Compared by requests, <em>improved</em> or <em>worse</em> "
               "needs the whole CI beyond ±{eff:.0%}; where each side was restarted at least three times (n counts "
               "runs), the CI over those runs decides by itself. Otherwise the change is not shown at this n. A "
               "single reading (memory) has no CI and gets no verdict.")


def table_html(rows: list[BeforeAfter], min_effect: float = verdicts.MIN_EFFECT) -> str:
    """The rows as one table for people: what, before, after, after / before, verdict; then how to read it."""
    if not rows:
        return ""
    head = ["", "before", "after", "after / before", "verdict"]
    body = []
    studies = list(dict.fromkeys(r.study for r in rows))
    prev = ""
    for r in rows:
        if len(studies) > 1 and (not body or r.study != prev):
            body.append(f'<tr class="group"><th colspan="{len(head)}">{html.escape(r.study.replace("_", " "))}</th></tr>')
        prev = r.study
        x = r.row
        cls = f' class="verdict-{x.verdict.split()[0]}"'
        before, after = (html.escape(v) + (f"<br><small>{html.escape(w)}</small>" if w else "")
                         for v, w in ((x.before, r.before_is), (x.after, r.after_is)))
        body.append(f"<tr><th>{html.escape(r.what)}</th><td>{before}</td><td>{after}</td>"
                    f"<td>{html.escape(x.ratio_text)}</td><td{cls}>{html.escape(x.verdict)}</td></tr>")
    return ('<div class="perfkit-table"><table class="dataframe perfkit before-after"><thead><tr>'
            + "".join(f"<th>{c}</th>" for c in head) + "</tr></thead><tbody>" + "".join(body)
            + f"</tbody></table></div><p class=\"muted\">{HOW_TO_READ.format(eff=min_effect)}</p>")

