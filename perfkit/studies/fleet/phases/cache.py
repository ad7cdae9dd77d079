"""nginx's response cache: identical greedy requests (hits, their latency and ratio), the same prompt with one
option changed (another key), sampled requests (a cache makes them identical) and, where perfkit can switch the
model behind the served name, a cached answer outliving the change."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from perfkit.core import events as E
from perfkit.analysis import stats
from perfkit.analysis.requests import ci_cell, est
from perfkit.core.units import RATIO
from perfkit.client.backends import Sampling

from ..phase_run import PhaseRun
from ..records import phase_rows
from ..results import CacheHits, CacheMisses, CacheSeedCheck, CacheSummary, SampledAnswers, StaleAnswer


def _greedy(run: PhaseRun) -> Sampling:
    # Greedy and seeded: the one kind of request whose cached answer is the answer the server would give.
    return Sampling(run.cfg.num_predict, temperature=0.0, top_k=1, seed=1)


def measure(run: PhaseRun) -> None:
    if not run.fleet.managed:
        _probe_users_cache(run)
        return
    # nginx stores only buffered responses: the cache brings buffering with it (see the overhead phase).
    run.fleet.reconfigure(cache=True, buffering=True)
    run.emit(E.ProxyCacheOn, key=run.fleet.nginx.cfg.cache_key, valid_s=run.fleet.nginx.cfg.cache_valid_s, ignore=[])
    base = run.proxy.prompt("cache/prompt", run.cfg.prompt_words)
    greedy = _greedy(run)
    _seed_check(run, base, greedy)
    _hits_and_samples(run, base, greedy)
    if run.cfg.stale_model:
        _stale_check(run, base, greedy)
    run.restore_proxy()


def _seed_check(run: PhaseRun, base: str, greedy: Sampling) -> None:
    """First as the seed writes it; a server's X-Accel-Buffering: no makes every response uncacheable, and the
    header is then ignored for the rest of the phase."""
    seed_rows = [run.one(run.proxy, f"cache/seed/{rep}", phase="cache", target="proxy", variant="as configured",
                         rep=rep, sampling=greedy, prompt=run.proxy.prompt("cache/seed", run.cfg.prompt_words))
                 for rep in range(2)]
    # nginx consumes X-Accel-* headers: ask the server itself what it sends.
    srv = run.one(run.direct[0], "cache/server-headers", phase="cache", target="direct", variant="server headers",
                  sampling=greedy, prompt=base)
    if seed_rows[-1].get("proxy_cache") != "HIT" and srv.get("accel_buffering") == "no":
        run.fleet.reconfigure(ignore_headers=["X-Accel-Buffering"])
        run.emit(E.ProxyCacheOn, key=run.fleet.nginx.cfg.cache_key, ignore=["X-Accel-Buffering"])


def _hits_and_samples(run: PhaseRun, base: str, greedy: Sampling) -> None:
    c = run.cfg
    sampled = Sampling(c.num_predict, temperature=0.8)
    for rep in range(c.cache_reps):
        run.one(run.proxy, f"cache/greedy/{rep}", phase="cache", target="proxy", variant="greedy", rep=rep,
                sampling=greedy, prompt=base)
    # The same prompt, one sampling option changed: another body, so another key.
    run.one(run.proxy, "cache/greedy-top_k2/0", phase="cache", target="proxy", variant="options differ", rep=0,
            sampling=Sampling(c.num_predict, temperature=0.0, top_k=2, seed=1), prompt=base)
    for rep in range(c.cache_reps):
        run.one(run.proxy, f"cache/sampled/{rep}", phase="cache", target="proxy", variant="sampled", rep=rep,
                sampling=sampled, prompt=base)
        run.one(run.direct[0], f"cache/sampled-direct/{rep}", phase="cache", target="direct", variant="sampled",
                rep=rep, sampling=sampled, prompt=base)


def _stale_check(run: PhaseRun, base: str, greedy: Sampling) -> None:
    """The model behind the served name switched: the server answers with the new one, the cache with the old."""
    run.fleet.swap_model(run.cfg.stale_model, run.ctx.models_dir)
    _unload_all(run)
    run.emit(E.ModelChanged, to=run.cfg.stale_model)
    run.one(run.proxy, "cache/stale/proxy", phase="cache", target="proxy", variant="after model change",
            sampling=greedy, prompt=base)
    run.one(run.direct[0], "cache/stale/direct", phase="cache", target="direct", variant="after model change",
            sampling=greedy, prompt=base)
    run.fleet.swap_model(run.cfg.model, run.ctx.models_dir)
    _unload_all(run)


def _unload_all(run: PhaseRun) -> None:
    # A swapped file is read only at the next load: every server must drop the model it holds.
    for i in range(len(run.fleet.servers)):
        nat = run.native(i)
        nat.unload(run.model)
        nat.close()


def _probe_users_cache(run: PhaseRun) -> None:
    """A user's proxy: identical greedy requests; its X-Cache-Status says what it did, where it says anything."""
    base = run.proxy.prompt("cache/prompt", run.cfg.prompt_words)
    greedy = _greedy(run)
    for rep in range(run.cfg.cache_reps):
        run.one(run.proxy, f"cache/greedy/{rep}", phase="cache", target="proxy", variant="greedy", rep=rep,
                sampling=greedy, prompt=base)


# ---- reading it ---------------------------------------------------------------------------------------------
def cache_summary(df: pd.DataFrame) -> CacheSummary | None:
    """What the cache did with the requests after the seed check (None: no cache phase recorded)."""
    g = phase_rows(df, "cache")
    if g.empty:
        return None
    ok = g[g["ok"].astype(bool)]
    v = ok["variant"] if "variant" in ok else pd.Series("", index=ok.index)
    proxied = ok[(ok["target"] == "proxy") & (v != "as configured")]
    status = proxied["proxy_cache"].fillna("none") if "proxy_cache" in proxied else pd.Series("none", index=proxied.index)
    hits, misses = proxied[status == "HIT"], proxied[status == "MISS"]
    opt = proxied[v.reindex(proxied.index) == "options differ"]
    return CacheSummary(
        requests=len(proxied), status_counts=status.value_counts().to_dict(), status_header=bool((status != "none").any()),
        hit_ratio=stats.proportion(len(hits), len(proxied)),
        options_differ_status=opt["proxy_cache"].iloc[0] if len(opt) and "proxy_cache" in opt else None,
        seed=_seed(ok, v), hits=_hits(hits), misses=_misses(misses, hits), sampled=_sampled(ok, v),
        stale=_stale(ok, v))


def _of(ok: pd.DataFrame, v: pd.Series, variant: str, target: str) -> pd.DataFrame:
    return ok[(v == variant) & (ok["target"] == target)]


def _seed(ok: pd.DataFrame, v: pd.Series) -> CacheSeedCheck | None:
    seed = _of(ok, v, "as configured", "proxy")
    if not len(seed):
        return None
    srv = ok[v == "server headers"]
    return CacheSeedCheck(seed["proxy_cache"].fillna("none").tolist(),
                          srv["accel_buffering"].iloc[0] if len(srv) else None)


def _hits(hits: pd.DataFrame) -> CacheHits | None:
    if not len(hits):
        return None
    itl = [x for t in hits["itl_s"] if isinstance(t, (list, np.ndarray)) for x in t]
    return CacheHits(ci_cell(est(hits["ttft_s"])), ci_cell(est(hits["e2e_s"])),
                     float(np.median(itl)) if itl else math.nan)


def _misses(misses: pd.DataFrame, hits: pd.DataFrame) -> CacheMisses | None:
    if not len(misses):
        return None
    return CacheMisses(ci_cell(est(misses["ttft_s"])), ci_cell(est(misses["e2e_s"])),
                       RATIO.estimate(stats.ratio(misses["e2e_s"], hits["e2e_s"])) if len(hits) else None)


def _sampled(ok: pd.DataFrame, v: pd.Series) -> SampledAnswers | None:
    via, direct = _of(ok, v, "sampled", "proxy"), _of(ok, v, "sampled", "direct")
    if not (len(via) and len(direct)):
        return None
    return SampledAnswers(n=int(min(len(via), len(direct))), distinct_direct=int(direct["text"].nunique()),
                          distinct_via_cache=int(via["text"].nunique()))


def _stale(ok: pd.DataFrame, v: pd.Series) -> StaleAnswer | None:
    stale_p, stale_d = _of(ok, v, "after model change", "proxy"), _of(ok, v, "after model change", "direct")
    greedy = _of(ok, v, "greedy", "proxy")
    if not (len(stale_p) and len(stale_d) and len(greedy)):
        return None
    return StaleAnswer(proxy_status=stale_p["proxy_cache"].iloc[0],
                       proxy_answer_is_old_model=bool(stale_p["text"].iloc[0] == greedy["text"].iloc[0]),
                       server_answer_changed=bool(stale_d["text"].iloc[0] != greedy["text"].iloc[0]))
