"""The study interface, the typed result every study returns, and what a study runs with.

A study answers one question. It declares its parameter section (``Params``), measures (``measure``,
resumable: what is recorded is never measured again), analyzes recorded data only (``analyze`` → a
:class:`StudyResult` whose ``figures`` are the numbers it stands by), and writes its conclusions from that
result. It says whether it can run on this machine (``unavailable``) and which models it names
(``models_used``). Register it with :func:`perfkit.studies.registry.register` and give it a notebook.
"""

from __future__ import annotations

import abc
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

from pydantic import Field, model_validator

import pandas as pd

from perfkit.analysis.figures import FILE_NAME as FIGURES_FILE, FigureSet, combine
from perfkit import kinds
from perfkit.core import interrupts
from perfkit.core.settings import server_settings
from perfkit.core.errors import PerfkitError
from perfkit.analysis.requests import noisy_counts
from perfkit.analysis.sequential import Looks
from perfkit.core.schema import MAX_REPS, Strict
from perfkit.core.store import RunStore
from perfkit.measure.session import Session, Target, session
from perfkit.measure.workload import Workload
from perfkit.servers.control.base import Unknown
from perfkit.workloads import WorkloadParams
from perfkit.studies import params as params_mod, registry

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
ENV_REPLICATE = "PERFKIT_REPLICATE"  # which replicate of a repeated run a study's kernel measures (1-based)
REPLICATE_FIGURES = "replicate-figures.json"  # one replicate's own figures, beside its data


def budget_field() -> Any:
    """The ``budget_s`` key of a section that measures in looks: the same key, bounds and words in every study."""
    return Field(None, gt=0, description="this study's time budget: no further look starts once it would be spent")


class MeasuredInLooks(Strict):
    """A study section that measures a comparison in planned looks until it is answered, within ``budget_s``
    (:mod:`perfkit.analysis.sequential`). ``looks_keys`` name the section's two keys of the plan: the repetitions
    of the first look (and of each look after it) and the most it measures (None: the first look only). The
    section declares those keys and ``budget_s`` (:func:`budget_field`) itself, where it wants them listed."""

    looks_keys: ClassVar[tuple[str, str]] = ("reps", "max_reps")

    @model_validator(mode="after")
    def _max_reps(self):
        reps_key, most_key = self.looks_keys
        reps, most = getattr(self, reps_key), getattr(self, most_key)
        if most is not None and most < reps:
            raise ValueError(f"{most_key} ({most}) must be ≥ {reps_key} ({reps})")
        return self

    def looks(self) -> Looks:
        reps_key, most_key = self.looks_keys
        return Looks(getattr(self, reps_key), getattr(self, most_key))


class UntilAnswered(MeasuredInLooks):
    """A study section that measures its comparison in planned looks (``reps``, then every ``reps`` more up to
    ``max_reps``) until it is answered, within ``budget_s`` (:mod:`perfkit.analysis.sequential`)."""

    shared_keys_last: ClassVar[bool] = True  # an error lists the study's own keys before these

    reps: int = Field(5, ge=1, le=MAX_REPS)
    max_reps: int | None = Field(None, ge=1, le=MAX_REPS, description=(
        "measure until the comparison is answered, looking after every `reps` more repetitions, up to this many; "
        "unset: `reps` only"))
    budget_s: float | None = budget_field()


@dataclass
class StudyResult:
    """What every study's analysis returns: its figures (the numbers it stands by, each with its CI and n),
    the recorded trials, the manifest (provenance) and a sentence on failed trials. A study's result class
    adds its own tables."""

    study: str
    figures: FigureSet
    trials: pd.DataFrame
    manifest: dict[str, Any]
    failures: str = ""
    notes: list[str] = field(default_factory=list)


class Study(abc.ABC):
    """One question perfkit answers; subclass, set the class attributes, register.

    ``name``: the parameter section and the directory of its data; ``title`` and ``question`` head its report;
    ``Params``: its parameter section (a :class:`perfkit.core.schema.Strict` model); ``order``: where a run
    measures it among the others; ``notebook``: its notebook (default ``notebooks/<name>.ipynb``).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    question: ClassVar[str] = ""
    Params: ClassVar[type[Strict]]
    order: ClassVar[int] = 100
    notebook: ClassVar[Path | None] = None

    def notebook_path(self) -> Path:
        path = self.notebook or NOTEBOOKS / f"{self.name}.ipynb"
        if not Path(path).exists():
            raise PerfkitError(f"study {self.name}: no notebook at {path}")
        return Path(path)

    def models_used(self, cfg: Any) -> list[tuple[str, str]]:
        """(key within the section, model) for every model the section names; checked before any work."""
        out = []
        if isinstance(getattr(cfg, "model", None), str):
            out.append(("model", cfg.model))
        for i, m in enumerate(getattr(cfg, "models", None) or []):
            out.append((f"models[{i}]", m))
        return out

    def check_params(self, params: Any) -> None:
        """A check across sections (this study against the backend, say): ValueError with the message."""

    def preflight(self, params: Any) -> list[str]:
        """Problems that would stop this study later and can be seen now (a server it needs unreachable,
        settings it must apply on a server perfkit can't restart), each naming the key; [] when none."""
        return []

    def unavailable(self, params: Any) -> str | None:
        """Why this study can't run on this machine with these parameters (the others still run), or None."""
        return None

    @abc.abstractmethod
    def measure(self, ctx: "StudyContext") -> None:
        """Measure into ``ctx.store``; a resumed run measures only what is not recorded yet."""

    @abc.abstractmethod
    def analyze(self, ctx: "StudyContext") -> StudyResult:
        """From recorded data only (no server): the result and its figures."""

    @abc.abstractmethod
    def conclusions(self, result: StudyResult) -> str:
        """Markdown: what the measurements say, every claim carried by a figure and its CI."""

    def run(self, ctx: "StudyContext") -> StudyResult:
        with interrupts.noted():
            self.measure(ctx)
        ctx.store.finalize()
        return self.analyze(ctx)


class StudyContext:
    """What a study runs with: the validated parameters, its section (``cfg``), its store and a server session.

    Args:
        params_path: the YAML parameter file.
        run_dir: the run's directory (``results/<run-id>``); the study writes under ``<run_dir>/<study>``.
        study: a registered study's name.
        check_models: check that the embedded store has every model named (off for analysis only).
        replicate: which replicate of a repeated run (``repeat:``); 1 writes to ``<study>/``, k to ``<study>/r<k>/``.
    """

    def __init__(self, params_path: str | Path, run_dir: str | Path, study: str, *, check_models: bool = True,
                 replicate: int = 1):
        self.params_path = Path(params_path)
        self.params = params_mod.load(self.params_path, check_models=check_models, only=[study])
        self.study = registry.get(study)
        self.name = study
        self.cfg = getattr(self.params.studies, study, None)
        if self.cfg is None:
            raise PerfkitError(f"{self.params_path}: studies.{study} is not set; this file enables: "
                               f"{', '.join(self.params.enabled()) or 'nothing'}")
        self.run_dir = Path(run_dir)
        self.replicate = replicate
        self.store = RunStore(replicate_dir(self.run_dir / study, replicate))
        self._cluster = None

    def cluster(self):
        """The run's Ray cluster (the ``cluster:`` section), joined on first use (``perfkit.cluster.Cluster``)."""
        if self._cluster is None:
            if self.params.cluster is None:
                raise PerfkitError(f"{self.params_path}: servers on other hosts need a cluster: section (its address)")
            from perfkit.cluster import Cluster

            self._cluster = Cluster(self.params.cluster).connect()
        return self._cluster

    def client_shares(self):
        """Load series sent from the cluster's client nodes (``cluster.clients``), or None: from this process."""
        c = self.params.cluster
        if c is None or not c.client_count():
            return None
        return self.cluster().clients()

    def close(self) -> None:
        """Take down what this study placed on the cluster (agents, client engines); Ray does it too if we die."""
        if self._cluster is not None:
            self._cluster.close()

    @property
    def models_dir(self) -> Path | None:
        """The model store of a server perfkit starts (None for a user's server)."""
        return kinds.get(self.params.backend.kind).models_dir(self.params.backend)

    @property
    def target(self) -> Target:
        p = self.params
        return Target(p.backend, p.timeouts, p.sampling, self.models_dir, self.run_dir / "logs", p.progress, p.telemetry)

    @contextmanager
    def session(self, settings: Mapping[str, Any] | None = None, *,
                keep_alive_s: float | None = None, server_metrics: bool = False) -> Iterator[Session]:
        """The server with ``base settings + settings`` (see :func:`perfkit.measure.session.session`)."""
        name = self.name if self.replicate == 1 else f"{self.name}-r{self.replicate}"
        with session(self.target, self.store, name=name, settings=settings, keep_alive_s=keep_alive_s,
                     models=[m for _, m in self.study.models_used(self.cfg)],
                     manifest={"study": self.name, "replicate": self.replicate,
                               "params": self.params.model_dump(mode="json"),
                               "params_file": str(self.params_path)}, server_metrics=server_metrics,
                     shares=self.client_shares(),
                     cluster=self.cluster() if self.params.backend.host else None) as s:
            yield s


    def workload(self, params: WorkloadParams, session: Session | None = None, model: str | None = None) -> Workload:
        """The section's workload bound to this run (seed, nonce, the parameter file's directory) and, with a
        session and a model, to the context one request gets on the server (a slot's, where it says)."""
        ctx_tokens = None
        if session is not None and model is not None:
            try:
                ctx_tokens = session.control.slots(model).get("n_ctx_per_slot")
            except Unknown:
                ctx_tokens = None
        return Workload(params, self.params_path.resolve().parent, self.params.seed, self.store.nonce(),
                        int(ctx_tokens) if ctx_tokens else None)


def settings_preflight(params: Any, key: str, settings: list[dict[str, Any]]) -> list[str]:
    """Server settings a study must apply (anything but one empty setting) need a server perfkit starts or can
    restart with a command: the problem, naming ``key``, when the backend can't."""
    b = params.backend
    servers = {tuple(sorted(server_settings(s).items())) for s in settings}  # request options need no restart
    changes = len(servers) > 1 or bool(next(iter(servers)))
    caps = kinds.capabilities(b.kind)
    if not changes or caps.started_by_perfkit:
        return []
    if not caps.settings_by_restart_command:
        return [f"{key}: applying server settings needs a server perfkit can restart; a backend of kind {b.kind!r} "
                f"can't be (use one setting, {{}}, to measure it as it runs)"]
    if not b.restart_command:
        return [f"{key}: applying them needs backend.restart_command{kinds.get(b.kind).restart_hint}; without it "
                "give one setting, {}"]
    return []


def replicate_dir(study_dir: Path, replicate: int) -> Path:
    """Where replicate ``replicate`` of a study keeps its data: the study's directory for the first."""
    return study_dir if replicate == 1 else study_dir / f"r{replicate}"


def replicates(study_dir: Path) -> list[int]:
    """The replicates of a study recorded in ``study_dir`` (1, 2, …), in order."""
    found = [1] if (study_dir / "trials.jsonl").exists() else []
    found += sorted(int(p.name[1:]) for p in study_dir.glob("r[0-9]*")
                    if p.name[1:].isdigit() and (p / "trials.jsonl").exists())
    return found


def analyze_all(params_path: str | Path, run_dir: str | Path, study: str) -> FigureSet:
    """Every recorded replicate's figures (each written beside its data) combined into the study's
    ``figures.json``: one run's figures as they are, several runs' with the between-run spread."""
    study_dir = Path(run_dir) / study
    sets = []
    for k in replicates(study_dir):
        ctx = StudyContext(params_path, run_dir, study, check_models=False, replicate=k)
        path = ctx.store.dir / REPLICATE_FIGURES
        try:
            sets.append(FigureSet.read(path))
        except (OSError, ValueError, KeyError, TypeError):
            res = ctx.study.analyze(ctx)
            figs = res.figures
            figs.noisy = noisy_counts(res.trials)
            figs.write(path)
            sets.append(figs)
    combined = combine(sets)
    combined.write(study_dir / FIGURES_FILE)
    return combined


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or a notebook's interrupt) during a measurement: one line on what was kept and how to go on,
    instead of a traceback through perfkit's internals (IPython shows ``_render_traceback_``)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def _render_traceback_(self) -> list[str]:
        return [self.message]


def _replay_params(params_path: Path, run_dir: Path, notes: list[str]) -> Path:
    """A re-render reads the run's own parameters (its ``params.yaml``), whatever file the caller names: the
    study, models and SLOs are the run's. A different file is ignored, and the report says so."""
    own = run_dir / "params.yaml"
    if not own.is_file():
        return params_path
    if Path(params_path).resolve() != own.resolve():
        from perfkit.core.yamlfile import read_yaml
        from perfkit.core.secrets import redact

        try:
            same = redact(read_yaml(params_path)) == redact(read_yaml(own))
        except Exception:  # noqa: BLE001 - unreadable: certainly not the run's
            same = False
        if not same:
            notes.append(f"This report re-reads recorded data with the run's own parameters ({own.name}); the "
                         f"parameter file given ({Path(params_path).name}) differs and was ignored.")
    return own


def run_or_load(params_path: str | Path, run_dir: str | Path, study: str, measure: bool = True) -> StudyResult:
    """What a notebook calls: measure (or, with ``measure=False``, re-read recorded data with the run's own
    parameters) and analyze.

    Under ``perfkit run --repeat N`` the kernel measures the replicate ``$PERFKIT_REPLICATE`` names; the
    result's tables are that replicate's, its figures combine every replicate recorded so far. The figures
    go to ``<run_dir>/<study>/figures.json`` for the index and ``perfkit compare``. Outside ``perfkit run``
    (JupyterLab), measuring into a run directory that already has data says so: it resumes, visibly."""
    import os

    from perfkit.core.children import ENV_OWNER, start_lifeline

    start_lifeline()  # under `perfkit run`: this kernel and its servers die with perfkit
    notes: list[str] = []
    run_dir = Path(run_dir)
    replicate = int(os.environ.get(ENV_REPLICATE) or 1)
    if not measure:  # a re-render shows the last replicate recorded, with the run's own parameters
        replicate = (replicates(run_dir / study) or [1])[-1]
        params_path = _replay_params(Path(params_path), run_dir, notes)
    ctx = StudyContext(params_path, run_dir, study, check_models=measure, replicate=replicate)
    if measure and not os.environ.get(ENV_OWNER):
        done = len(ctx.store.done_ids())
        if done:
            print(f"Resuming the run in {run_dir}: {done} trial(s) already recorded there are kept and not measured "
                  "again. Set run_dir to a new directory (or delete this one) to start afresh.")
            notes.append(f"Resumed: {done} trial(s) were already recorded in {run_dir} before this session.")
    try:
        result = ctx.study.run(ctx) if measure else ctx.study.analyze(ctx)
    except KeyboardInterrupt:
        kept = len(ctx.store.done_ids())
        raise Interrupted(f"Interrupted: {kept} trial(s) of {study} are kept in {ctx.store.dir}; run this "
                          "notebook again with the same run_dir to measure only the rest.") from None
    finally:
        ctx.close()
    result.notes[:0] = notes
    result.figures.noisy = noisy_counts(result.trials)
    result.figures.write(ctx.store.dir / REPLICATE_FIGURES)
    reps = replicates(run_dir / study)
    combined = analyze_all(params_path, run_dir, study)
    if len(reps) > 1:
        result.figures = combined
        result.notes.append(f"This run repeats the study {len(reps)} times: the tables and plots show replicate "
                            f"{replicate}; every figure quoted (conclusions, the figures table, the results index, "
                            "`perfkit compare`) combines all of them, its CI spanning the spread between the runs.")
    return result
