"""Named baselines for the gate: a run's figures and manifests, kept under a name with the fingerprint of what
makes runs comparable (host and GPUs, server kind and version, model digests, workload).

A baseline is a copy of what a comparison reads (each study's ``figures.json`` and ``manifest.json``, and
``run.json``), small enough to commit beside the parameter file, in a store directory (``--store``, else
``$PERFKIT_BASELINES``, else ``./baselines``): ``STORE/NAME/baseline.json`` says where it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from perfkit.compare.gate import fingerprint
from perfkit.compare.runs import load
from perfkit.core.clock import utc_now
from perfkit.core.errors import PerfkitError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
COPIED = ("figures.json", "manifest.json")


def store_dir(store: str | Path | None = None) -> Path:
    return Path(store or os.environ.get("PERFKIT_BASELINES") or "baselines")


def fingerprint_id(fp: dict[str, Any]) -> str:
    """A short, stable name for a fingerprint (its JSON's SHA-256, 12 hex digits)."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class Baseline:
    name: str
    source: str
    saved_utc: str
    fingerprint: dict[str, Any]
    fingerprint_id: str
    studies: list[str]
    path: str  # the copied run (what the gate compares with)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_name(name: str) -> str:
    if not NAME.fullmatch(name or ""):
        raise PerfkitError(f"baseline name {name!r}: letters, digits, '.', '_' and '-' (up to 64), starting with a "
                           "letter or digit")
    return name


def save(name: str, run_dir: str | Path, store: str | Path | None = None, *, replace: bool = False) -> Baseline:
    """Keep ``run_dir``'s figures and manifests as baseline ``name``. A name already taken by a baseline of
    another fingerprint is refused unless ``replace`` (a baseline silently rebased onto other hardware would pass
    every later gate)."""
    _check_name(name)
    run = load(run_dir)  # refuses what is not a run, or damaged, with its reason
    fp = fingerprint(run)
    fid = fingerprint_id(fp)
    home = store_dir(store) / name
    old = read(name, store) if (home / "baseline.json").exists() else None
    if old is not None and old.fingerprint_id != fid and not replace:
        raise PerfkitError(f"baseline {name!r} exists for another fingerprint ({old.fingerprint_id}: "
                           f"{old.fingerprint['host'].get('cpu')}, {old.fingerprint['server']}); "
                           f"{Path(run_dir).name} is {fid}. Give --replace to rebase it, or another name")
    tmp = home.with_name(home.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    copy = tmp / run.name
    for s in run.studies:
        (copy / s).mkdir(parents=True)
        for f in COPIED:
            shutil.copy2(run.path / s / f, copy / s / f)
    if (run.path / "run.json").exists():
        shutil.copy2(run.path / "run.json", copy / "run.json")
    b = Baseline(name, str(Path(run_dir).resolve()), utc_now(), fp, fid, list(run.studies),
                 str(Path(home) / run.name))
    (tmp / "baseline.json").write_text(json.dumps(b.as_dict(), indent=2, default=str))
    shutil.rmtree(home, ignore_errors=True)
    tmp.replace(home)
    return b


def read(name: str, store: str | Path | None = None) -> Baseline:
    _check_name(name)
    path = store_dir(store) / name / "baseline.json"
    try:
        d = json.loads(path.read_text())
        b = Baseline(**d)
    except FileNotFoundError:
        have = ", ".join(x.name for x in list_all(store)) or "none"
        raise PerfkitError(f"no baseline {name!r} in {store_dir(store)} (have: {have}); "
                           f"`perfkit baseline save {name} RUN` makes one") from None
    except (OSError, ValueError, TypeError) as e:
        raise PerfkitError(f"{path} is damaged ({e}); save the baseline again") from None
    # The copy moves with the store (a checkout elsewhere): found beside baseline.json, not at its old path.
    b.path = str(path.parent / Path(b.path).name)
    return b


def list_all(store: str | Path | None = None) -> list[Baseline]:
    d = store_dir(store)
    out = []
    for p in sorted(d.glob("*/baseline.json")) if d.is_dir() else []:
        try:
            out.append(read(p.parent.name, store))
        except PerfkitError:
            continue
    return out
