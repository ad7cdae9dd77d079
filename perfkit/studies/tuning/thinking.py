"""``think`` in a tune: a request option searched beside the server's settings (no restart: the client sends it
with every request), what thinking costs at the stated clients, and the tuned request options the deploy files
cannot carry (they configure the server, and no server setting makes a client send ``think``)."""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from perfkit.analysis import figures as F
from perfkit.core.settings import name_of, request_options

from .results import TuningResult

_OUT = ("merged", "not eligible", "the server could not")  # candidates that can't stand for their think value


def request_option_text(settings: Mapping[str, Any]) -> str:
    """The request options among ``settings`` as a user writes them ('think=false'); '' when there are none."""
    return ", ".join(f"{name_of(role)}={v}" for role, v in request_options(settings).items())


def deploy_comment(settings: Mapping[str, Any]) -> str:
    """Comment lines for the head of each deploy file when the tuned setting holds a request option."""
    opts = request_option_text(settings)
    if not opts:
        return ""
    return (f"# {opts}: part of the tuned setting, but a request option, not a server setting, so it is not in this "
            "file:\n# your clients must send it with every request (the tune measured it that way).\n")


def deploy_note(settings: Mapping[str, Any]) -> str:
    """The report's words for the same: '' when the tuned setting holds no request option."""
    opts = request_option_text(settings)
    return (f" `{opts}` is part of the tuned setting but no server setting: the files leave it out, and your "
            "clients must send it with every request." if opts else "")


def _best(t: pd.DataFrame, better: str) -> pd.Series | None:
    """The candidate with the best objective among those that stand for themselves."""
    t = t[~t["status"].str.startswith(_OUT) & t["value"].notna()]
    if t.empty:
        return None
    return t.loc[t["value"].idxmax() if better == "higher" else t["value"].idxmin()]


def thinking_lines(res: TuningResult, conc: int) -> list[str]:
    """Where ``think`` was searched: the best candidate with each ``think`` value — its objective, its first answer
    token beside TTFT (its first thought) and its thinking tokens — at ``conc`` clients; and requests that asked to
    think and did not."""
    out = []
    t = res.candidates
    if res.thinking and len(t) and "think" in t and t["think"].notna().any():
        better = F.metric(res.objective_tag).better if res.objective_tag else "higher"
        parts = []
        for value, g in t[t["think"].notna()].groupby("think", sort=True):
            r = _best(g, better)
            if r is None:
                continue
            label = f"**{r['setting']}**" if r["setting"] == f"think={value}" else f"think={value}: **{r['setting']}**"
            part = f"{label} {r['objective']}"
            if res.objective_tag != "ttfa":
                part += f", first answer token {r.get('first answer token', '—')}"
            thought = r.get("thinking_median")
            part += (f", after {r.get('thinking tokens', '—')} of thinking (TTFT, its first thought: {r.get('TTFT', '—')})"
                     if thought == thought and thought else ", no thinking")
            parts.append(part)
        if parts:
            out.append(f"- **What thinking costs** at {conc} client{'s' if conc != 1 else ''} (the best candidate with "
                       f"each `think` value, by {res.objective_what or 'the objective'}; `think` is a request option, "
                       "sent with every request and tried without a restart): " + "; ".join(parts) + ".")
    if res.ignored_think:
        out.append(f"- **`think` was ignored**: {res.ignored_think} request(s) asked the model to think and streamed "
                   "no thought (the server, or the model's template, does not support it).")
    return out

