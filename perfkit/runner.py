"""The trial runner: warmups flagged, repetitions in interleaved order with a recorded seed,
closed-loop concurrency and open-loop Poisson arrivals, per-request timeouts, resumable runs.

Every trial becomes one row in the run's store the moment it completes.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pandas as pd
from tqdm import tqdm

from .backends.base import DEFAULT_TIMEOUT_S, Backend, Sampling
from .coldstart import confirm, ensure_warm, prepare_state
from .errors import PerfkitError
from .prompts import prompt_for
from .records import CACHE_STATES, now_ns
from .store import RunStore


@dataclass
class Trial:
    """One planned request. ``trial_id`` is stable across a resume: it keys the store."""

    trial_id: str
    model: str
    cache_state: str = "warm"
    rep: int = 0
    warmup: bool = False
    variant: str = ""
    prompt_words: int = 48
    sampling: Sampling = field(default_factory=Sampling)
    logprobs: bool = False
    prompt_key: str | None = None  # same key → same prompt (quantization drift compares variants on it)
    tags: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cache_state not in CACHE_STATES:
            raise PerfkitError(f"trial {self.trial_id}: unknown cache state {self.cache_state!r}; "
                               f"allowed: {', '.join(CACHE_STATES)}")
        self.variant = self.variant or self.model

    @property
    def prompt(self) -> str:
        return self.prompt_with("")

    def prompt_with(self, nonce: str) -> str:
        """The prompt this trial sends in a run whose nonce is ``nonce``."""
        return prompt_for(self.prompt_key or self.trial_id, self.prompt_words, nonce)


def plan(variants: Sequence[str], reps: int, *, prefix: str, warmup: int = 1, cache_state: str = "warm",
         seed: int = 0, models: dict[str, str] | None = None, **trial_kw: Any) -> list[Trial]:
    """Warmup trials (flagged) then ``reps`` rounds; each round runs every variant once, in an order
    shuffled with ``seed`` + round, so drift (thermal, page cache) can't favour one variant."""
    models = models or {v: v for v in variants}
    rng = random.Random(seed)
    trials = [Trial(f"{prefix}/{v}/warmup{w}", models[v], "warm", w, True, v, **trial_kw)
              for w in range(warmup) for v in variants]
    for rep in range(reps):
        order = list(variants)
        rng.shuffle(order)
        trials += [Trial(f"{prefix}/{v}/rep{rep}", models[v], cache_state, rep, False, v,
                         tags={"order_seed": seed}, **trial_kw) for v in order]
    return trials


class Runner:
    """Runs trials against one backend into one store.

    Args:
        timeout_s: bound on each request (default 30 min: a cold 72B load must not be cut off).
        stall_timeout_s: bound on silence inside a stream (defaults to timeout_s).
        monitor: optional ``perfkit.sampling.Monitor``; each row then gets resource figures for the
            request's own window.
        progress: show a progress bar (stderr).
    """

    def __init__(self, backend: Backend, store: RunStore, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 stall_timeout_s: float | None = None, monitor=None, progress: bool = True,
                 on_row: Callable[[dict], None] | None = None, keep_alive: object = None):
        self.backend, self.store = backend, store
        self.timeout_s, self.stall_timeout_s = timeout_s, stall_timeout_s
        self.monitor, self.progress, self.on_row = monitor, progress, on_row
        self.keep_alive = keep_alive  # sent with every request and preload (Ollama), so the server default never applies
        self.nonce = store.nonce()

    def prompt(self, key: str, words: int) -> str:
        """The prompt for ``key`` in this run (the run's nonce mixed in)."""
        return prompt_for(key, words, self.nonce)

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, disable=not self.progress, file=sys.stderr, leave=False)

    def record(self, rec, **meta: Any) -> dict:
        """Store one measured request as a row: ``meta`` + the record + its resource window."""
        row = {**meta, **rec.as_dict()}
        if self.monitor is not None and rec.t_end_ns:
            row.update(self.monitor.request_summary(rec))
        self._store(row)
        return row

    # ---- independent trials -----------------------------------------------------------------------
    def run(self, trials: Sequence[Trial], desc: str = "trials") -> pd.DataFrame:
        """Run the trials not already in the store; return this plan's rows (old and new)."""
        done = self.store.done_ids()
        todo = [t for t in trials if t.trial_id not in done]
        if len(todo) < len(trials):
            self.store.event("resume", skipped=len(trials) - len(todo), desc=desc)
        with self._bar(len(todo), desc) as bar:
            for t in todo:
                self.run_one(t)
                bar.update(1)
        ids = {t.trial_id for t in trials}
        df = self.store.trials()
        return df[df["trial_id"].isin(ids)].reset_index(drop=True) if len(df) else df

    def run_one(self, t: Trial) -> dict:
        prompt = t.prompt_with(self.nonce)
        try:
            check = prepare_state(self.backend, t.model, t.cache_state, prompt=prompt, sampling=t.sampling,
                                  keep_alive=self.keep_alive)
        except Exception as e:  # noqa: BLE001 - a failed set-up is a failed trial, never a crash
            row = {"trial_id": t.trial_id, "variant": t.variant, "model": t.model, "cache_state": t.cache_state,
                   "rep": t.rep, "warmup": t.warmup, "ok": False, "error": f"state set-up: {e}", **t.tags}
            self._store(row)
            return row
        rec = self.backend.generate(t.model, prompt, t.sampling, timeout_s=self.timeout_s,
                                    stall_timeout_s=self.stall_timeout_s, logprobs=t.logprobs,
                                    keep_alive=self.keep_alive)
        check = confirm(check, rec, self.backend.shared_prefix_tokens(t.model))
        state = {f"state_{k}": v for k, v in check.as_dict().items() if k != "cache_state"}
        return self.record(rec, trial_id=t.trial_id, variant=t.variant, cache_state=t.cache_state, rep=t.rep,
                           warmup=t.warmup, prompt_words=t.prompt_words, sampling=t.sampling.present(),
                           **state, **t.tags)

    def _resources(self, rows: list[tuple[dict, Any]]) -> pd.DataFrame:
        """Resource windows of a finished series' requests, stored beside its rows (keyed by trial id)."""
        if self.monitor is not None:
            res = [{"trial_id": row["trial_id"], **self.monitor.request_summary(rec)} for row, rec in rows
                   if rec.t_end_ns]
            self.store.append_resources(res)
            by_id = {r["trial_id"]: r for r in res}
            for row, _ in rows:
                row.update(by_id.get(row["trial_id"], {}))
        return pd.DataFrame([row for row, _ in rows])

    def _store(self, row: dict) -> None:
        self.store.append_trial(row)
        if self.on_row:
            self.on_row(row)

    # ---- load series: closed loop and open loop ------------------------------------------------
    def _series_done(self, series: str) -> pd.DataFrame | None:
        ev = self.store.events()
        if len(ev) and "series" in ev and ((ev["kind"] == "series_done") & (ev["series"] == series)).any():
            attempt = int(ev[(ev["kind"] == "series_done") & (ev["series"] == series)]["attempt"].iloc[-1])
            df = self.store.trials()
            return df[(df.get("series") == series) & (df.get("attempt") == attempt)].reset_index(drop=True)
        return None

    def _attempt(self, series: str) -> int:
        ev = self.store.events()
        if len(ev) and "series" in ev:
            return int(((ev["kind"] == "series_start") & (ev["series"] == series)).sum())
        return 0

    def closed_loop(self, model: str, concurrency: int, n_requests: int, *, series: str,
                    sampling: Sampling | None = None, prompt_words: int = 48, tags: dict | None = None) -> pd.DataFrame:
        """``concurrency`` clients each send their next request as soon as the last one ends.

        A series is the unit of resume: an interrupted one is re-run whole under a new attempt, so
        its concurrency is never mixed; its rows are all kept, flagged by ``attempt``.
        """
        if concurrency < 1 or n_requests < 1:
            raise PerfkitError(f"closed loop needs concurrency ≥ 1 and requests ≥ 1 (got {concurrency}, {n_requests})")
        done = self._series_done(series)
        if done is not None:
            return done
        attempt = self._attempt(series)
        self.store.event("series_start", series=series, attempt=attempt, mode="closed", concurrency=concurrency)
        ensure_warm(self.backend, model, self.keep_alive)
        counter = iter(range(n_requests))
        lock = threading.Lock()
        rows: list[dict] = []
        bar = self._bar(n_requests, series)
        t0 = now_ns()

        def worker(w: int) -> None:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                key = f"{series}/a{attempt}/{i}"
                rec = self.backend.generate(model, self.prompt(key, prompt_words), sampling,
                                            timeout_s=self.timeout_s, stall_timeout_s=self.stall_timeout_s,
                                            keep_alive=self.keep_alive)
                # Stored at once (nothing lost on a kill), resource windows after the series: waiting for
                # samples here would be think time and lower the achieved concurrency.
                row = {"trial_id": key, "series": series, "attempt": attempt, "mode": "closed",
                       "concurrency": concurrency, "worker": w, "index": i, "cache_state": "warm", "warmup": False,
                       "variant": model, **(tags or {}), **rec.as_dict()}
                self._store(row)
                with lock:
                    rows.append((row, rec))
                    bar.update(1)

        with ThreadPoolExecutor(concurrency, thread_name_prefix="perfkit-client") as pool:
            list(pool.map(worker, range(concurrency)))
        bar.close()
        t1 = now_ns()
        out = self._resources(rows)
        self.store.event("series_done", series=series, attempt=attempt, t_start_ns=t0, t_end_ns=t1)
        return out

    def open_loop(self, model: str, rate_rps: float, n_requests: int, *, series: str, seed: int = 0,
                  sampling: Sampling | None = None, prompt_words: int = 48, tags: dict | None = None,
                  max_in_flight: int = 256) -> pd.DataFrame:
        """Requests arrive as a Poisson process at ``rate_rps`` (exponential gaps, seeded), whether
        or not earlier ones have finished; ``send_lag_s`` records how late each one left."""
        if rate_rps <= 0 or n_requests < 1:
            raise PerfkitError(f"open loop needs rate > 0 and requests ≥ 1 (got {rate_rps}, {n_requests})")
        done = self._series_done(series)
        if done is not None:
            return done
        attempt = self._attempt(series)
        self.store.event("series_start", series=series, attempt=attempt, mode="open", rate_rps=rate_rps, seed=seed)
        ensure_warm(self.backend, model, self.keep_alive)
        rng = random.Random(seed)
        offsets, t = [], 0.0
        for _ in range(n_requests):
            offsets.append(t)
            t += rng.expovariate(rate_rps)
        rows: list[dict] = []
        lock = threading.Lock()
        bar = self._bar(n_requests, series)
        start = time.perf_counter()

        def one(i: int) -> None:
            key = f"{series}/a{attempt}/{i}"
            lag = time.perf_counter() - start - offsets[i]
            rec = self.backend.generate(model, self.prompt(key, prompt_words), sampling,
                                        timeout_s=self.timeout_s, stall_timeout_s=self.stall_timeout_s,
                                        keep_alive=self.keep_alive)
            row = {"trial_id": key, "series": series, "attempt": attempt, "mode": "open", "rate_rps": rate_rps,
                   "index": i, "scheduled_s": offsets[i], "send_lag_s": lag, "cache_state": "warm", "warmup": False,
                   "variant": model, "seed": seed, **(tags or {}), **rec.as_dict()}
            self._store(row)
            with lock:
                rows.append((row, rec))
                bar.update(1)

        with ThreadPoolExecutor(min(max_in_flight, n_requests), thread_name_prefix="perfkit-arrival") as pool:
            futures = []
            for i, off in enumerate(offsets):
                delay = start + off - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(one, i))
            for f in futures:
                f.result()
        bar.close()
        out = self._resources(rows)
        self.store.event("series_done", series=series, attempt=attempt)
        return out


def throughput(rows: pd.DataFrame) -> dict[str, float]:
    """Aggregate figures of a load series: requests/s, output tokens/s, achieved concurrency."""
    ok = rows[rows["ok"]] if "ok" in rows else rows
    if ok.empty:
        return {"requests_s": float("nan"), "output_tok_s": float("nan"), "concurrency_achieved": float("nan")}
    t0, t1 = ok["t_send_ns"].min(), ok["t_end_ns"].max()
    span_s = (t1 - t0) * 1e-9
    busy_s = ((ok["t_end_ns"] - ok["t_send_ns"]) * 1e-9).sum()
    return {"requests_s": len(ok) / span_s, "output_tok_s": ok["output_tokens"].sum() / span_s,
            "concurrency_achieved": busy_s / span_s, "span_s": span_s, "n_ok": len(ok),
            "n_failed": int(len(rows) - len(ok))}


def goodput(rows: pd.DataFrame, *, ttft_s: float | None = None, tpot_s: float | None = None) -> float:
    """Requests/s that met every SLO given (failed requests never do)."""
    if rows.empty:
        return float("nan")
    good = rows["ok"].astype(bool)
    if ttft_s is not None:
        good &= rows["ttft_s"] <= ttft_s
    if tpot_s is not None:
        good &= rows["tpot_s"].fillna(0) <= tpot_s
    span_s = (rows["t_end_ns"].max() - rows["t_send_ns"].min()) * 1e-9
    return float(good.sum() / span_s) if span_s > 0 else float("nan")
