"""The trial runner: warmups flagged, repetitions in interleaved order with a recorded seed,
closed-loop concurrency and open-loop Poisson arrivals, per-request timeouts, resumable runs.

Every trial becomes one row in the run's store the moment it completes.
"""

from __future__ import annotations

import marshal
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pandas as pd

from perfkit.client.backends.base import DEFAULT_TIMEOUT_S, Backend, Sampling
from perfkit.measure.cache_states import confirm, ensure_warm, prepare_state
from perfkit.core.errors import PerfkitError
from perfkit.client.loadgen import Job, ProcessShares, run_series, run_sessions
from perfkit.client.stream import Capture, decode
from perfkit.core.prompts import prompt_for
from perfkit.core.clock import now_ns
from perfkit.core.events import (ClientLost, PrimeFailed, Resumed, SeriesDone, SeriesRecovered, SeriesResources,
                                  SeriesStarted, events_of)
from perfkit.core.records import CACHE_STATES
from perfkit.core.store import RunStore
from perfkit.measure.progress import Progress
from perfkit.analysis.series import steady_window
from perfkit.measure.workload import Workload, estimate_prompt_tokens
from perfkit.measure.conversation import ChatSession
from perfkit.core.tools import Tools
from perfkit.workloads.tools import judge
from perfkit.workloads.build import answer_tokens


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
                 on_row: Callable[[dict], None] | None = None, keep_alive: object = None, client_workers: int = 1):
        self.backend, self.store = backend, store
        self.timeout_s, self.stall_timeout_s = timeout_s, stall_timeout_s
        self.monitor, self.progress, self.on_row = monitor, progress, on_row
        self.keep_alive = keep_alive  # sent with every request and preload (Ollama), so the server default never applies
        self.nonce = store.nonce()
        self.client_workers = client_workers  # load series: client processes (see perfkit.loadgen.run_series)
        # Load series sent from client nodes of a cluster instead (perfkit.cluster.ClientShares), or None.
        self.shares = None

    @property
    def live_responses(self) -> bool:
        """Whether a series' ``on_response`` runs as each response ends (here), or only after the series (its
        shares ran in other processes or on client nodes)."""
        return self.shares is None and self.client_workers <= 1

    @property
    def start_lead_s(self) -> float:
        """How long after a series is set off its requests start (its shares' agreed start; 0 here)."""
        if self.shares is not None:
            return self.shares.start_lead_s
        return ProcessShares.start_lead_s if self.client_workers > 1 else 0.0

    def prompt(self, key: str, words: int) -> str:
        """The prompt for ``key`` in this run (the run's nonce mixed in)."""
        return prompt_for(key, words, self.nonce)

    def _bar(self, total: int, desc: str) -> Progress:
        return Progress(self.store.dir, desc, total, interactive=self.progress)

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
            self.store.emit(Resumed(skipped=len(trials) - len(todo), desc=desc))
        with self._bar(len(todo), desc) as bar:
            for t in todo:
                self.run_one(t)
                bar.update(1, t.variant if t.variant == t.cache_state else f"{t.variant}, {t.cache_state}")
        ids = {t.trial_id for t in trials}
        df = self.store.trials()
        return df[df["trial_id"].isin(ids)].reset_index(drop=True) if len(df) else df

    def run_one(self, t: Trial) -> dict:
        prompt = t.prompt_with(self.nonce)
        try:
            check = prepare_state(self.backend, t.model, t.cache_state, prompt=prompt, sampling=t.sampling,
                                  keep_alive=self.keep_alive, timeout_s=self.timeout_s)
        except Exception as e:  # noqa: BLE001 - a failed set-up is a failed trial, never a crash
            row = {"trial_id": t.trial_id, "variant": t.variant, "model": t.model, "cache_state": t.cache_state,
                   "rep": t.rep, "warmup": t.warmup, "ok": False, "error": f"state set-up: {e}", **t.tags}
            self._store(row)
            return row
        rec = self.backend.generate(t.model, prompt, t.sampling, timeout_s=self.timeout_s,
                                    stall_timeout_s=self.stall_timeout_s, logprobs=t.logprobs,
                                    keep_alive=self.keep_alive)
        check = confirm(check, rec, self.backend.shared_prefix_tokens(t.model),
                        load_seen=self.backend.capabilities.load_seen_per_request)
        state = {f"state_{k}": v for k, v in check.as_dict().items() if k != "cache_state"}
        return self.record(rec, trial_id=t.trial_id, variant=t.variant, cache_state=t.cache_state, rep=t.rep,
                           warmup=t.warmup, prompt_words=t.prompt_words, sampling=t.sampling.present(),
                           **state, **t.tags)

    def _resources(self, rows: list[tuple[dict, Any]]) -> pd.DataFrame:
        """Resource windows of a finished series' requests, stored beside its rows (keyed by trial id)."""
        if self.monitor is not None:
            done = [(row, rec) for row, rec in rows if rec.t_end_ns]
            res = [{"trial_id": row["trial_id"], **summary} for (row, _), summary
                   in zip(done, self.monitor.request_summaries([rec for _, rec in done]))]
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
        done = events_of(self.store.events(), SeriesDone)
        done = done[done["series"] == series]
        if len(done):
            attempt = int(done["attempt"].iloc[-1])
            df = self.store.trials()
            return df[(df.get("series") == series) & (df.get("attempt") == attempt)].reset_index(drop=True)
        return None

    def _attempt(self, series: str) -> int:
        started = events_of(self.store.events(), SeriesStarted)
        return int((started["series"] == series).sum())

    def closed_loop(self, model: str, concurrency: int, n_requests: int, *, series: str,
                    sampling: Sampling | None = None, prompt_words: int = 48, tags: dict | None = None,
                    on_response: Callable[[int, Capture], None] | None = None,
                    workload: Workload | None = None) -> pd.DataFrame:
        """``concurrency`` streams each send their next request the moment the last one ends (no think time).
        With a ``sessions`` workload, ``concurrency`` users each hold chat sessions (:meth:`sessions`).

        A series is the unit of resume: an interrupted one is re-run whole under a new attempt, so
        its concurrency is never mixed; what the interrupted attempt measured is kept, flagged.
        """
        if concurrency < 1 or n_requests < 1:
            raise PerfkitError(f"closed loop needs concurrency ≥ 1 and requests ≥ 1 (got {concurrency}, {n_requests})")
        if workload is not None and workload.params.multi_turn:
            return self.sessions(model, concurrency, n_requests, series=series, sampling=sampling, tags=tags,
                                 workload=workload)
        return self._series(model, series, [0.0] * n_requests, concurrency, sampling, prompt_words, tags,
                            {"mode": "closed", "concurrency": concurrency}, on_response, workload)

    def open_loop(self, model: str, rate_rps: float | None, n_requests: int, *, series: str, seed: int = 0,
                  arrivals: str = "poisson", sampling: Sampling | None = None, prompt_words: int = 48,
                  tags: dict | None = None, workload: Workload | None = None, burstiness: float = 1.0) -> pd.DataFrame:
        """Requests sent on a fixed schedule at ``rate_rps`` (``poisson``: exponential gaps, seeded;
        ``constant``: even gaps), whether or not earlier ones have finished, with no cap on what is in
        flight. Latency counts from the send and from the schedule (``ttft_sched_s``), so a late
        client can't hide a slow server (coordinated omission)."""
        if n_requests < 1 or (rate_rps is not None and rate_rps <= 0):
            raise PerfkitError(f"open loop needs rate > 0 and requests ≥ 1 (got {rate_rps}, {n_requests})")
        if workload is not None and workload.params.kind == "trace":
            # A trace's own arrivals; at an offered rate, its burst shape rescaled to that mean rate.
            offsets = [r.offset_s or 0.0 for r in workload.requests(n_requests, key=series)]
            span = offsets[-1] - offsets[0]
            own = (len(offsets) - 1) / span if span > 0 else None
            if rate_rps is not None and own:
                offsets = [o * own / rate_rps for o in offsets]
            rate_rps, arrivals = rate_rps or own or 1.0, "trace"
        elif rate_rps is None:
            raise PerfkitError("open loop needs a rate (rate_rps) unless the workload is a trace")
        else:
            offsets = schedule(arrivals, rate_rps, n_requests, seed, burstiness)
        info = {"mode": "open", "rate_rps": rate_rps, "arrivals": arrivals, "seed": seed}
        if arrivals == "gamma":
            info["burstiness"] = burstiness
        return self._series(model, series, offsets, None, sampling, prompt_words, tags, info, None, workload)

    def _series(self, model: str, series: str, offsets: list[float], concurrency: int | None,
                sampling: Sampling | None, prompt_words: int, tags: dict | None, info: dict,
                on_response: Callable[[int, Capture], None] | None = None,
                workload: Workload | None = None) -> pd.DataFrame:
        """``on_response(i, capture)``: runs on the loop as each response ends (a fault injected after
        k responses, say); keep it as cheap as the spool write beside it."""
        done = self._series_done(series)
        if done is not None:
            return done
        attempt = self._attempt(series)
        make = self._jobs(model, series, offsets, sampling, prompt_words, workload)
        if workload is not None:
            info = {**info, "workload": workload.params.kind}
        if attempt:
            self._recover(series, attempt - 1, make(attempt - 1), info, tags, model, offsets)
        self.store.emit(SeriesStarted(series=series, attempt=attempt, **info))
        try:
            ensure_warm(self.backend, model, self.keep_alive, timeout_s=self.timeout_s)
        except PerfkitError as e:
            # The server fails even the priming request: the series still runs, and every failure it
            # records (by class) is the finding; nothing is gained by stopping here.
            self.store.emit(PrimeFailed(series=series, attempt=attempt, error=str(e)[:300]))
        jobs = make(attempt)
        spool = _Spool(self._spool_path(series, attempt))
        bar = self._bar(len(jobs), series)
        clients = self.shares.parts if self.shares is not None else None  # a node lost in this series still sent

        def on_done(i: int, cap) -> None:  # on the loop: a buffered write and a tick, nothing more
            spool.write(i, cap)
            bar.update(1)
            if on_response is not None:
                on_response(i, cap)

        try:
            t0 = now_ns()
            recs, check = run_series(jobs, concurrency=concurrency, timeout_s=self.timeout_s,
                                     stall_timeout_s=self.stall_timeout_s, on_done=on_done,
                                     workers=self.client_workers, shares=self.shares)
            t1 = now_ns()
        finally:
            spool.close()
            bar.close()
        if check.lost_requests:
            # Never measured (their client node died): not failures of the server, so not rows; which ones is kept.
            lost = [i for i, r in enumerate(recs) if r is None]
            self.store.emit(ClientLost(series=series, attempt=attempt, because=check.lost_because, requests=lost))
            was = self.store.manifest().get("client_nodes_lost") or []
            self.store.write_manifest(client_nodes_lost=was + [{"series": series, "because": check.lost_because,
                                                                "requests_lost": len(lost),
                                                                "requests": len(recs)}])
        if clients is not None:
            info = {**info, "clients": clients}
        rows = self._rows(series, attempt, info, tags, model, ((i, r) for i, r in enumerate(recs) if r is not None),
                          offsets, jobs=jobs)
        self.store.extend_trials(rows)
        for row in rows:
            if self.on_row:
                self.on_row(row)
        window = steady_window(pd.DataFrame(rows), concurrency)
        self.store.emit(SeriesDone(series=series, attempt=attempt, t_start_ns=t0, t_end_ns=t1, client=check.as_dict(),
                                   **window))
        spool.path.unlink(missing_ok=True)
        if self.monitor is not None:
            # The whole series' window: what the GPUs, the server's host and the server's own metrics did under
            # this load (per-request windows overlap under concurrency, so energy per token comes from this one).
            w = self.monitor.measure("series", *requests_span(rows, t0, t1))
            self.store.emit(_resources_event(series, attempt, w))
        return self._resources(list(zip(rows, [r for r in recs if r is not None])))

    def sessions(self, model: str, users: int, n_requests: int, *, series: str, workload: Workload,
                 sampling: Sampling | None = None, tags: dict | None = None) -> pd.DataFrame:
        """Chat sessions: ``users`` concurrent users each take the next conversation and send its questions one by
        one, each with the whole history so far — the server's own answers, never the dataset's — after the
        workload's think time, until about ``n_requests`` turns in all. A turn whose estimated prompt exceeds
        the context (``workload.context_tokens``) is flagged before it is sent, and sent: what the server then does
        (truncates, refuses) is the finding. A failed turn ends its conversation. Resumed like any series."""
        done = self._series_done(series)
        if done is not None:
            return done
        attempt = self._attempt(series)
        info = {"mode": "closed", "concurrency": users, "users": users, "workload": "sessions"}
        if attempt:
            self._recover_sessions(series, attempt - 1, info, tags, model)
        self.store.emit(SeriesStarted(series=series, attempt=attempt, **info))
        try:
            ensure_warm(self.backend, model, self.keep_alive, timeout_s=self.timeout_s)
        except PerfkitError as e:
            self.store.emit(PrimeFailed(series=series, attempt=attempt, error=str(e)[:300]))
        key = f"{series}/a{attempt}"
        convs = workload.conversations(n_requests, key=key)
        ctx = workload.context_tokens
        planned: dict[tuple[int, int], dict] = {}
        tools: dict[tuple[int, int], Tools | None] = {}

        chats: dict[int, ChatSession] = {}

        def make_call(s: int, turn: int, recs: list) -> Any:
            c = convs[s]
            chat = chats.setdefault(s, ChatSession(c, workload.tag(s), workload.params.tool_choice,
                                                   workload.params.max_tool_rounds))
            nxt = chat.next(recs)
            if chat.cut and turn:
                planned[(s, turn - 1)]["tool_rounds_cut"] = True
            if nxt is None:
                return None
            msgs = nxt.messages
            prev = recs[-1] if recs else None
            est_tokens = estimate_prompt_tokens(msgs, prev.prompt_tokens if prev else None,
                                                prev.output_tokens if prev else None, nxt.new_words)
            q = nxt.plan["question"]
            answer = c.answers[q] if q < len(c.answers) else None
            cap = answer_tokens(answer) if workload.params.output == "dataset" else None
            planned[(s, turn)] = {"conversation": c.id, "session": s, "turn": turn, "history_turns": turn,
                                  **nxt.plan,
                                  "prompt_words": sum(len((m.get("content") or "").split()) for m in msgs),
                                  "est_prompt_tokens": est_tokens, "context_tokens": ctx,
                                  "over_context": bool(ctx and est_tokens > ctx)}
            tools[(s, turn)] = nxt.tools
            return self.backend.stream_call(model, msgs, _capped(sampling, cap), keep_alive=self.keep_alive,
                                            tools=nxt.tools)

        spool = _Spool(self._spool_path(series, attempt))
        bar = self._bar(n_requests, series)
        turns_out: list = []
        if self.shares is not None and not self.store.manifest().get("sent_from_driver"):
            # A conversation carries each answer into its next question: its turns go from here, not client nodes.
            self.store.write_manifest(sent_from_driver="chat sessions (each answer goes into the next question)")

        def on_done(i: int, cap) -> None:
            bar.update(1)

        try:
            t0 = now_ns()
            turns_out, check = run_sessions(self.backend.target, len(convs), users, make_call,
                                            timeout_s=self.timeout_s, stall_timeout_s=self.stall_timeout_s,
                                            think_s=workload.think_s(key), on_done=on_done)
            t1 = now_ns()
            for i, t in enumerate(turns_out):  # a crash from here on keeps what was measured (read back on resume)
                plan = planned[(t.session, t.turn)]
                rec = t.rec.as_dict()
                plan.update(judge(rec, tools[(t.session, t.turn)], plan.pop("tool_expected_list", None)))
                spool.write_row(i, {**plan, "stream": t.user, "rec": rec})
        finally:
            spool.close()
            bar.close()
        rows = [self._session_row(series, attempt, i, info, tags, model, planned[(t.session, t.turn)], t.user,
                                  t.rec.as_dict()) for i, t in enumerate(turns_out)]
        self.store.extend_trials(rows)
        for row in rows:
            if self.on_row:
                self.on_row(row)
        window = steady_window(pd.DataFrame(rows), users)
        self.store.emit(SeriesDone(series=series, attempt=attempt, t_start_ns=t0, t_end_ns=t1,
                                   conversations=len(convs), client=check.as_dict(), **window))
        spool.path.unlink(missing_ok=True)
        if self.monitor is not None:
            w = self.monitor.measure("series", *requests_span(rows, t0, t1))
            self.store.emit(_resources_event(series, attempt, w))
        return self._resources([(row, t.rec) for row, t in zip(rows, turns_out)])

    @staticmethod
    def _session_row(series: str, attempt: int, i: int, info: dict, tags: dict | None, model: str, plan: dict,
                     user: int, rec: dict, **extra: Any) -> dict:
        row = {"trial_id": f"{series}/a{attempt}/{i}", "series": series, "attempt": attempt, **info, "index": i,
               "cache_state": "warm", "warmup": False, "variant": model, **plan, "stream": user, **extra,
               **(tags or {}), **rec}
        pt = rec.get("prompt_tokens")
        # The server counted fewer prompt tokens than a prompt over the context holds: it dropped some.
        row["server_truncated"] = bool(plan.get("over_context") and rec.get("ok") and pt is not None
                                       and pt < 0.9 * plan["est_prompt_tokens"])
        return row

    def _recover_sessions(self, series: str, attempt: int, info: dict, tags: dict | None, model: str) -> None:
        path = self._spool_path(series, attempt)
        rows = [self._session_row(series, attempt, i, info, tags, model,
                                  {k: v for k, v in d.items() if k not in ("rec", "stream")}, d.get("stream"),
                                  d["rec"], interrupted=True) for i, d in sorted(_Spool.read_rows(path).items())]
        if rows:
            self.store.extend_trials(rows)
            self.store.emit(SeriesRecovered(series=series, attempt=attempt, n=len(rows)))
        path.unlink(missing_ok=True)

    def _jobs(self, model: str, series: str, offsets: list[float], sampling: Sampling | None,
              prompt_words: int, workload: Workload | None = None) -> Callable[[int], list[Job]]:
        """Every request of an attempt, built (prompts made, bodies serialized) before any timing starts."""
        def make(attempt: int) -> list[Job]:
            if workload is None:
                return [Job(self.backend.target,
                            self.backend.stream_call(model, self.prompt(f"{series}/a{attempt}/{i}", prompt_words),
                                                     sampling, keep_alive=self.keep_alive), off)
                        for i, off in enumerate(offsets)]
            reqs = workload.requests(len(offsets), key=f"{series}/a{attempt}", prompt_words=prompt_words)
            return [Job(self.backend.target,
                        self.backend.stream_call(model, r.messages, _capped(sampling, r.num_predict),
                                                 keep_alive=self.keep_alive, tools=r.tools),
                        off, {**r.tags, "prompt_words": r.words}, r.tools, r.expected_tools)
                    for r, off in zip(reqs, offsets)]
        return make

    def _rows(self, series: str, attempt: int, info: dict, tags: dict | None, model: str,
              recs, offsets: list[float], jobs: list[Job] | None = None, **extra: Any) -> list[dict]:
        """One row per (index, record) of an attempt."""
        sched = info["mode"] == "open"
        return [{"trial_id": f"{series}/a{attempt}/{i}", "series": series, "attempt": attempt, **info,
                 "index": i, **({"scheduled_s": offsets[i]} if sched else {}), "cache_state": "warm",
                 "warmup": False, "variant": model, **extra, **(tags or {}), **(jobs[i].tags if jobs else {}),
                 **rec.as_dict(), **({"turn_kind": "question", **judge(rec.as_dict(), jobs[i].tools,
                                                                        jobs[i].expected_tools)}
                                     if jobs and jobs[i].tools else {})} for i, rec in recs]

    def _spool_path(self, series: str, attempt: int):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in series)
        return self.store.dir / "spool" / f"{safe}.a{attempt}.bin"

    def _recover(self, series: str, attempt: int, jobs: list[Job], info: dict, tags: dict | None, model: str,
                 offsets: list[float]) -> None:
        """Store what an interrupted attempt measured before it was killed (from its spool), flagged
        ``interrupted``: nothing measured is lost, and no analysis mixes it with a whole series."""
        path = self._spool_path(series, attempt)
        caps = _Spool.read(path)
        if caps:
            recs = [(i, decode(jobs[i].call, cap)) for i, cap in sorted(caps.items()) if i < len(jobs)]
            rows = self._rows(series, attempt, info, tags, model, recs, offsets, jobs=jobs, interrupted=True)
            self.store.extend_trials(rows)
            self.store.emit(SeriesRecovered(series=series, attempt=attempt, n=len(rows)))
        path.unlink(missing_ok=True)


def _resources_event(series: str, attempt: int, window) -> SeriesResources:
    """A series' whole window (``perfkit.sampling.monitor.Window``) as its event: the window's own fields by name,
    its per-source statistics (named by what was sampled) as the rest of the row."""
    return SeriesResources.from_fields({"series": series, "attempt": attempt,
                                        **{k: v for k, v in window.as_dict().items() if k != "name"}})


def requests_span(rows: list[dict], t0_ns: int, t1_ns: int) -> tuple[int, int]:
    """The series' window for what the GPUs and the host did: its requests' own span, first send to last end (the
    client's start-up lead, on worker processes or client nodes, is idle time that would dilute every figure);
    the client's span where no request was sent."""
    sends = [r["t_send_ns"] for r in rows if isinstance(r.get("t_send_ns"), (int, float)) and r["t_send_ns"] > 0]
    ends = [r["t_end_ns"] for r in rows if isinstance(r.get("t_end_ns"), (int, float)) and r["t_end_ns"] > 0]
    if not sends or not ends or max(ends) <= min(sends):
        return t0_ns, t1_ns
    return int(min(sends)), int(max(ends))


def schedule(arrivals: str, rate_rps: float, n: int, seed: int = 0, burstiness: float = 1.0) -> list[float]:
    """Send offsets (s from the start): ``poisson`` (exponential gaps, seeded), ``constant``, or ``gamma`` gaps of
    mean 1/rate whose shape is ``burstiness`` (1: Poisson; below 1: bursts and lulls; above 1: steadier)."""
    if arrivals == "constant":
        return [i / rate_rps for i in range(n)]
    if arrivals not in ("poisson", "gamma"):
        raise PerfkitError(f"unknown arrivals {arrivals!r}; allowed: poisson, constant, gamma")
    if burstiness <= 0:
        raise PerfkitError(f"burstiness must be > 0 (got {burstiness})")
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for _ in range(n):
        offsets.append(t)
        t += rng.expovariate(rate_rps) if arrivals == "poisson" else rng.gammavariate(burstiness, 1 / (rate_rps * burstiness))
    return offsets


def _capped(sampling: Sampling | None, num_predict: int | None) -> Sampling | None:
    """The series' sampling with a request's own output cap (a dataset answer's or a trace's length)."""
    if num_predict is None:
        return sampling
    from dataclasses import replace

    return replace(sampling or Sampling(), num_predict=num_predict)


class _Spool:
    """Raw responses of the running series, appended as each ends (marshal: fast enough for the loop,
    no fsync: a killed process's writes are in the page cache), read back only after a crash."""

    def __init__(self, path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "wb")

    def write(self, i: int, cap) -> None:
        self.write_row(i, {k: v for k, v in cap.__dict__.items() if not k.startswith("_")})

    def write_row(self, i: int, row: dict) -> None:
        blob = marshal.dumps((i, row))
        self._f.write(len(blob).to_bytes(4, "little") + blob)

    def close(self) -> None:
        self._f.close()

    @staticmethod
    def read_rows(path) -> dict[int, dict]:
        """Index → what was written, up to the first record a kill tore."""
        out: dict[int, dict] = {}
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return out
        pos = 0
        while pos + 4 <= len(data):
            n = int.from_bytes(data[pos:pos + 4], "little")
            if pos + 4 + n > len(data):
                break  # torn by the kill
            try:
                i, row = marshal.loads(data[pos + 4:pos + 4 + n])
            except (EOFError, ValueError, TypeError):
                break
            out[i] = row
            pos += 4 + n
        return out

    @staticmethod
    def read(path) -> dict[int, Capture]:
        return {i: Capture(**{k: v for k, v in fields.items() if k in Capture.__dataclass_fields__})
                for i, fields in _Spool.read_rows(path).items()}
