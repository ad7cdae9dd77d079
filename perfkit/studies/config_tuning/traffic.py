"""What config tuning says of the traffic beyond plain generation: speculative decoding (how many drafted tokens
were accepted, and what the draft did to decode speed against the first setting) and thinking models (the first
answer token against the first thought, the thinking's time and tokens, a server that ignored ``think``)."""

from __future__ import annotations

from perfkit.analysis import stats
from perfkit.analysis.figures import Figure, FigureSet
from perfkit.analysis import toolturns
from perfkit.analysis.requests import ignored_think, measured, thought_without_answer
from perfkit.core.settings import most_alike
from perfkit.core.units import RATIO

from .results import ConfigTuningResult


def _by_setting(figs: FigureSet, tag: str, clients: int, configs: list[str]) -> dict[str, Figure]:
    return {cfg: f for cfg in configs if (f := figs.get(f"config_tuning/{tag}/{cfg}/{clients}")) is not None}


def _fewest_clients(figs: FigureSet, tag: str) -> int | None:
    found = [int(f.where["clients"]) for f in figs.values() if f.metric == tag and "clients" in f.where]
    return min(found) if found else None


def _configs(res: ConfigTuningResult) -> list[str]:
    t = res.table
    return list(t.sort_values("config_index")["config"].drop_duplicates()) if len(t) and "config" in t else []


def speculative_lines(res: ConfigTuningResult) -> list[str]:
    """Each setting's acceptance rate, and a drafting setting's decode speed against the most similar setting that
    does not draft, with a CI and a verdict. The
    rate is the server's per-request counts where it gives them, else its ``/metrics`` counters over the series."""
    figs, configs = res.figures, _configs(res)
    lo = _fewest_clients(figs, "draft_acceptance")
    counters = lo is None
    if counters:
        lo = _fewest_clients(figs, "series_draft_acceptance")
    if lo is None or not configs:
        return []
    accepted = _by_setting(figs, "series_draft_acceptance" if counters else "draft_acceptance", lo, configs)
    speed = _by_setting(figs, "decode_rate", lo, configs)
    plain = [c for c in configs if c not in accepted]
    parts = []
    for cfg in configs:
        a, d = accepted.get(cfg), speed.get(cfg)
        part = f"**{cfg}**: " + (f"{a.text()} of the drafted tokens accepted" if a else "no draft")
        if d is not None:
            part += f", decode speed {d.text()}"
            base = most_alike(cfg, plain) if a else None
            b = speed.get(base) if base else None
            if b is not None and d.samples and b.samples:
                r = stats.ratio(d.samples, b.samples)
                verdict = ("faster" if r.lo > 1 else "slower" if r.hi < 1 else "no change detectable at this n") \
                    if r.lo == r.lo else f"too few requests for a CI (n≥{r.need_n} each)"
                part += f", {RATIO.estimate(r)} {base}'s, the same server without a draft ({verdict})"
        parts.append(part)
    source = ("the server's own counters of drafted and accepted tokens (its /metrics) over each series' window, "
              "one reading per setting with no CI, server-wide so other clients' requests count too"
              if counters else "the server's own count of drafted and accepted tokens per request")
    speed_source = "; decode speed is the server's, per request" if speed else ""
    return [f"- **Speculative decoding** (at {lo} client{'s' if lo != 1 else ''}; {source}{speed_source}): "
            + "; ".join(parts) + "."]


def _cost(with_thinking: Figure, without: Figure | None, base: str | None) -> str:
    """What thinking did to the first answer token against a setting that did not think: a ratio with its CI."""
    if without is None or not with_thinking.samples or not without.samples:
        return ""
    r = stats.ratio(with_thinking.samples, without.samples)
    if r.lo != r.lo:
        return f"; against {base}'s first answer token too few requests for a CI (n≥{r.need_n} each)"
    verdict = "later" if r.lo > 1 else "sooner" if r.hi < 1 else "no change detectable at this n"
    return f"; its first answer token came {RATIO.estimate(r)} {base}'s ({verdict})"


def thinking_lines(res: ConfigTuningResult) -> list[str]:
    """When the model thought: what a user waits for (the first answer token) beside TTFT (the first thought),
    the thinking's time and tokens per setting, and requests that asked to think and did not."""
    figs, configs = res.figures, _configs(res)
    lo = _fewest_clients(figs, "ttfa")
    out = []
    if lo is not None and configs:
        ttfa, ttft = _by_setting(figs, "ttfa", lo, configs), _by_setting(figs, "ttft", lo, configs)
        thought, tokens = _by_setting(figs, "thinking_time", lo, configs), _by_setting(figs, "thinking_tokens", lo, configs)
        plain = [c for c in configs if c in ttfa and c not in thought]
        parts = []
        for cfg in (c for c in configs if c in ttfa):
            part = f"**{cfg}**: first answer token {ttfa[cfg].text()} (TTFT {ttft[cfg].text() if cfg in ttft else '—'})"
            if cfg in thought and cfg in tokens:
                base = most_alike(cfg, plain)
                part += f", thinking {thought[cfg].text()} and {tokens[cfg].text()}" + \
                    _cost(ttfa[cfg], ttfa.get(base) if base else None, base)
            else:
                part += ", no thinking"
            parts.append(part)
        out.append(f"- **Thinking** (at {lo} client{'s' if lo != 1 else ''}): a thinking request's TTFT is its first "
                   "*thought*; a user waits for the first answer token: " + "; ".join(parts) + ".")
    unanswered, thinking = thought_without_answer(res.trials)
    if unanswered:
        out.append(f"- **{unanswered} of {thinking} requests that thought never reached an answer**: they spent every "
                   "token they were allowed thinking, so their first answer token is missing from the figures above "
                   "(a larger num_predict shows what the answer costs after the thinking).")
    ignored = ignored_think(res.trials)
    if ignored:
        out.append(f"- **`think` was ignored**: {ignored} request(s) asked the model to think and streamed no "
                   "thought (the server, or the model's template, does not support it).")
    return out



def tool_lines(res: ConfigTuningResult) -> list[str]:
    """Where the dataset's conversations offer tools (one question each): how the server used them per setting
    and client count."""
    df = res.trials
    closed = df[df["mode"] == "closed"] if "mode" in df else df
    if closed.empty or not toolturns.has_tools(closed):
        return []
    table = toolturns.table(measured(closed), closed, ["config", "concurrency"])
    lines = toolturns.lines(table, measured(closed), ["config", "concurrency"],
                            lambda k: f"{k[0]}, {int(k[1])} client{'s' if int(k[1]) != 1 else ''}")
    return ["- **Tools** (each request offered its conversation's tools; one question, no tool result sent back):",
            *["  " + x for x in lines]]
