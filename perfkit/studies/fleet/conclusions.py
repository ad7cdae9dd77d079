"""The fleet study's conclusions: the answer in at most three sentences, then what each phase's measurements say,
every claim carried by a figure or a summary with its n and CI."""

from __future__ import annotations

import math

import pandas as pd

from perfkit.analysis.requests import method_note
from perfkit.core import fmt
from perfkit.report.answer import answer_block

from .formatting import span
from .results import CacheSummary, FleetResult

METHOD = ("Throughput CI: batch means inside each series' steady-state window; added latency: Hodges–Lehmann shift "
          "with Moses CI; shares: Clopper–Pearson.")


def answer(res: FleetResult) -> list[str]:
    """How well the servers scale behind the proxy and what the proxy costs (at most three sentences)."""
    n, out = len(res.fleet.servers), []
    eff = [f for f in res.figures.values() if f.metric == "efficiency"]
    if eff:
        top = max(eff, key=lambda f: int(f.where.get("clients_per_server", 0)))
        cps = int(top.where.get("clients_per_server", 0))
        thr = next((f for f in res.figures.values() if f.metric == "throughput" and f.where.get("target") == "proxy"
                    and int(f.where.get("clients", 0)) == n * cps), None)
        out.append(f"{n} servers behind the proxy serve {thr.link() if thr is not None else fmt.NA} at {n * cps} "
                   f"clients: {top.link(fmt.pct(top.value))} of {n} × one server's throughput at {cps} "
                   f"client{'s' if cps != 1 else ''}.")
    over = [f for f in res.figures.values() if f.metric == "proxy_overhead"]
    if over:
        out.append("The proxy adds " + ", ".join(f"{f.link()} ({f.where.get('buffering')})" for f in over)
                   + " to the time to first token.")
    fo = res.failover
    if fo is not None and fo.kill_reached and fo.requests:
        out.append(f"With one server killed mid-run, {fo.failed} of {fo.requests} requests failed.")
    return out


def conclusions(res: FleetResult) -> str:
    lines = [answer_block(answer(res), res.failures) + "### What the measurements say", _fleet_line(res)]
    for part in (_scaling, _balance, _overhead, _cold_upstream, _cold_disk, _hosts, _clocks, _settings, _agents,
                 _failover, _timeout, _cache, _skipped, _hosts_lost):
        lines += part(res)
    if res.failures:
        lines.append("- " + res.failures + " (the failover and timeout phases fail requests on purpose).")
    lines += ["", method_note(res.manifest, METHOD)]
    return "\n".join(lines)


def _fleet_line(res: FleetResult) -> str:
    f = res.fleet
    proxy = f"nginx {f.proxy_version} started by perfkit" if f.managed else f"your proxy at {f.proxy_url}"
    return (f"- **Fleet**: {len(f.servers)} servers behind {proxy}"
            f" (weights {', '.join(str(s.weight) for s in f.servers)}).")


def _scaling(res: FleetResult) -> list[str]:
    t, n, out = res.scaling, len(res.fleet.servers), []
    if not len(t):
        return out
    for _, r in t[t["target"] == "proxy"].iterrows():
        d = t[(t["clients_per_server"] == r["clients_per_server"]) & (t["target"] == "direct")]
        fe = res.figures.get(f"fleet/efficiency/{int(r['clients_per_server'])}")
        eff = fe.text() if fe is not None else fmt.NA
        out.append(f"- **Scaling** with {r['clients_per_server']} client(s) per server: {r['tok_s_text']} through "
                   f"the proxy over {n} servers at {r['clients']} clients, against "
                   f"{d['tok_s_text'].iloc[0] if len(d) else 'n/a'} from one server at {r['clients_per_server']}: "
                   f"efficiency {eff} (fleet ÷ {n} × one server; 1 = perfect).")
    f = res.fleet
    if f.cores and f.threads_per_server:
        out.append(f"- On this machine {n} servers × {f.threads_per_server} thread(s) share {f.cores} cores "
                   "with the client and nginx: where they fill the cores, scaling is bounded by the machine, "
                   "not by the proxy.")
    bound = t[t["client_bound"]]
    if len(bound):
        out.append(f"- The client's self-check in {len(bound)} scaling series: {bound['client_check'].iloc[0]}.")
    return out


def _balance(res: FleetResult) -> list[str]:
    b = res.balance
    if not len(b):
        return [f"- **Balance**: {res.balance_source}."]
    parts = [f"{r['server']} {fmt.pct(r['share'])} [{fmt.pct(r['share_lo'])}, {fmt.pct(r['share_hi'])}] "
             f"(weight {r['weight']}: {fmt.pct(r['configured share'])})" for _, r in b.iterrows()]
    verdict = "matches the weights" if b["matches weights"].all() else "does not match the weights"
    return [f"- **Balance** (from {res.balance_source}, {int(b['requests'].sum())} requests): "
            + "; ".join(parts) + f": the split {verdict} at 95% confidence."]


def _overhead(res: FleetResult) -> list[str]:
    out = []
    for _, r in res.overhead.iterrows():
        held = {True: "the first token **was held back** until the response was complete",
                False: "streaming survives (first token not held back)", None: "held back: unknown"}[r["first_token_held_back"]]
        out.append(f"- **Proxy overhead** (buffering {r['buffering']}, n={r['n']} pairs): {_added_ttft(r)}; "
                   f"{span(r['added_e2e_s'], r['added_e2e_lo'], r['added_e2e_hi'])} end to end; {held}.")
    return out


def _added_ttft(r: pd.Series) -> str:
    """What the proxy adds to TTFT, claimed only as far as its CI carries it."""
    sh = r["added_ttft"]
    s = span(r["added_ttft_s"], r["added_ttft_lo"], r["added_ttft_hi"])
    if sh.has_ci and sh.hi < 0:
        return (f"⚠ **suspect data**: proxied requests measured faster than direct ones ({s} TTFT), which a "
                "proxy in the path can't be; the direct and proxied requests did not see the same server state")
    if sh.has_ci and sh.lo <= 0 <= sh.hi:
        return f"no overhead detectable at this n ({s} TTFT: the CI includes 0)"
    if sh.has_ci:
        return f"{s} added to TTFT"
    return f"{s} TTFT (no CI at this n: no claim either way)"


def _cold_upstream(res: FleetResult) -> list[str]:
    cu = res.cold_upstream
    if not len(cu):
        return []
    c, w = cu[cu["cold"]], cu[~cu["cold"]]
    if not len(c):
        return []
    return [f"- **A cold server** behind the proxy: the first request it got waited "
            f"{fmt.duration(c['first_ttft_s'].iloc[0])} for its first token (the load), against a TTFT p50 of "
            f"{w['ttft_p50'].iloc[0] if len(w) else 'n/a'} on the warm one{'s' if len(w) > 1 else ''}."]


def _cold_disk(res: FleetResult) -> list[str]:
    cd, out = res.cold_disk, []
    if not len(cd):
        return out
    cold = cd[cd["cold"]]
    if len(cold):
        parts = [f"{r['server']} {fmt.duration(r['ttft_s'])} to the first token ({fmt.pct(r['file_in_page_cache'])} "
                 "of the file in its host's page cache at the send)" if r["ok"] else f"{r['server']} failed ({r['error']})"
                 for _, r in cold.iterrows()]
        out.append("- **A cold disk on each server's own host** (the model unloaded everywhere, memory released, "
                   "the file evicted there; one request each, n=1 per server, so no CI): " + "; ".join(parts) + ".")
    for _, r in cd[~cd["cold"]].iterrows():
        out.append(f"- **No cold disk on {r['server']}**: {fmt.pct(r['file_in_page_cache'])} of the model file stayed "
                   "in its host's page cache after the eviction (another process holds it), so its first request "
                   f"({fmt.duration(r['ttft_s'])}) is not a cold-disk figure.")
    return out


def _hosts(res: FleetResult) -> list[str]:
    if not len(res.hosts):
        return []
    busiest = res.hosts.sort_values("server_cpu_pct_mean").iloc[-1]
    return [f"- **Each server's host**, as its own host sampled it ({res.hosts['server'].nunique()} "
            f"server(s)): the busiest was {busiest['server']} in {busiest['phase']}, its process tree at "
            f"{busiest['server_cpu_pct_mean']:.0f}% of a core on average; per phase in the hosts table."]


def _clocks(res: FleetResult) -> list[str]:
    nodes = res.cluster_nodes
    if not nodes:
        return []
    worst = max(d.clock_uncertainty_s for d in nodes)
    return [f"- **One clock**: {len(nodes)} cluster node(s), each clock's offset measured from "
            f"{nodes[0].clock_round_trips} round trips; every time a node stamped "
            f"(its samples, its log, its requests) is on the run's clock within ± {fmt.duration(worst)} (the "
            "widest)."]


def _settings(res: FleetResult) -> list[str]:
    st = res.settings
    if not (len(st) and "status" in st):
        return []
    per = []
    for server, g in st.groupby("server", sort=False):
        bad = g[g["status"] == "not applied"]
        unver = g[g["status"] == "unverifiable"]
        per.append(f"{server}: " + (", ".join(f"{r['name']} {r['wanted']} **not applied** (runs "
                                               f"{r['effective']})" for _, r in bad.iterrows()) or
                                    f"{(g['status'] == 'confirmed').sum()} of {len(g)} confirmed")
                   + (f" ({len(unver)} unverifiable: {unver['evidence'].iloc[0]})" if len(unver) else ""))
    return ["- **Settings on each host** (asked of each server, its log or its process): " + "; ".join(per) + "."]


def _agents(res: FleetResult) -> list[str]:
    return [f"- ⚠ **{a.host}: the user's server did not get its own settings back** at the end "
            f"({a.restore_failed}); the host's watchdog and the next perfkit there try again."
            for a in res.agents_closed if a.restore_failed is not None]


def _failover(res: FleetResult) -> list[str]:
    fo = res.failover
    if fo is None or not fo.kill_reached or not fo.victim:
        return []
    classes = f" ({'; '.join(f'{k} ×{v}' for k, v in fo.failure_classes.items())})" if fo.failed else ""
    return [f"- **A server killed mid-run** ({fo.victim}): {fo.failed} of {fo.requests} requests failed{classes}"
            f"; the proxy tried the dead server {fo.proxy_tries_on_dead_server} time(s) after the kill, "
            f"{fo.retried_elsewhere_ok} of them retried on another server successfully; its last try came "
            f"{fmt.duration(fo.last_try_on_dead_server_s_after_kill)} after the kill. Every response before and after "
            f"was kept ({fo.ok} ok)."]


def _timeout(res: FleetResult) -> list[str]:
    to, out = res.timeout, []
    a = to.advice
    if a is not None:
        out.append(f"- **Timeout advice**: cold-start TTFT p50 {a.cold_ttft_p50_text}, longest "
                   f"{fmt.duration(a.cold_ttft_max_s)}. Set `proxy_read_timeout` ≥ **{a.recommended_read_timeout_s:.0f} s** "
                   f"(2 × {a.basis}); configured: {to.configured_read_timeout_s:g} s.")
    for p in to.probes:
        out.append(f"- **Proxy timeout** {fmt.duration(p.proxy_read_timeout_s)} ({p.probe}), a cold request: "
                   f"**{p.outcome}**.")
    return out


def _cache(res: FleetResult) -> list[str]:
    ca = res.cache
    if ca is None:
        return []
    if not ca.status_header:
        return ["- **Response cache**: unknown, because the proxy sends no X-Cache-Status header (a proxy "
                "without a cache sends none; one with a cache needs `add_header X-Cache-Status "
                "$upstream_cache_status always;`)."]
    return _cache_seed(ca) + [_cache_hits(ca)] + _cache_keys_and_answers(ca)


def _cache_seed(ca: CacheSummary) -> list[str]:
    seed = ca.seed
    if seed is None or not seed.statuses or "HIT" in seed.statuses:
        return []
    why = (", because the server sends `X-Accel-Buffering: no`, which turns nginx's buffering and with it the cache "
           "off per response; `proxy_ignore_headers X-Accel-Buffering;` fixes it (used below)."
           if seed.server_accel_buffering == "no" else ".")
    return [f"- ⚠ **A plain nginx cache configuration cached nothing**: two identical requests were "
            f"{' then '.join(seed.statuses)}" + why]


def _cache_hits(ca: CacheSummary) -> str:
    hr = ca.hit_ratio
    hit_e2e = ca.hits.e2e_text if ca.hits is not None else "n/a"
    miss_e2e = ca.misses.e2e_text if ca.misses is not None else "n/a"
    itl = ca.hits.itl_p50_s if ca.hits is not None else math.nan
    return (f"- **Response cache**: hit ratio {fmt.pct(hr.value)} [{fmt.pct(hr.lo)}, {fmt.pct(hr.hi)}] of "
            f"{ca.requests} requests; a hit took {hit_e2e} end to end vs a miss {miss_e2e}. A hit replays the stored "
            f"stream in one burst (ITL p50 {fmt.duration(itl)}): token timing through a cache is not the server's.")


def _cache_keys_and_answers(ca: CacheSummary) -> list[str]:
    out = []
    if ca.options_differ_status:
        out.append(f"- The same prompt with one sampling option changed was a **{ca.options_differ_status}**: "
                   "the key is the whole body, so any option change is another entry.")
    sa = ca.sampled
    if sa is not None:
        out.append(f"- ⚠ **Unsafe with temperature > 0**: {sa.n} sampled requests gave {sa.distinct_direct} "
                   f"different answers from the server and {sa.distinct_via_cache} through the cache: identical "
                   "prompts should not get identical answers. Cache only greedy (temperature 0) requests.")
    st = ca.stale
    if st is not None:
        out.append(f"- ⚠ **Stale answers**: after the model behind the name changed, the server's answer "
                   f"{'changed' if st.server_answer_changed else 'did not change'} but the proxy answered "
                   f"{st.proxy_status} with the {'old' if st.proxy_answer_is_old_model else 'new'} model's "
                   "text: purge the cache (or key it on the model digest) whenever a model changes.")
    return out


def _skipped(res: FleetResult) -> list[str]:
    return [f"- {s.phase.replace('_', ' ').capitalize()}: {s.why}." for s in res.skipped]


def _hosts_lost(res: FleetResult) -> list[str]:
    return [f"- ⚠ **Host {h.server} was lost** during the run ({h.why}): its samples and log end there; "
            "the figures after it that needed its agent are missing, not estimated." for h in res.hosts_lost]
