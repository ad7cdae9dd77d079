"""How long a study of a run is expected to take, so progress can show the whole run's time left, not only the
phase's: the wall time of the same study in the newest finished run of the same parameter set in the results
directory; else the study's own time budget (``budget_s``); else unknown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perfkit.core.errors import PerfkitError
from perfkit.run.rundir import read_run


def expected_s(results_dir: Path, params_name: str, study: str, section: Any, *, exclude: Path | None = None
               ) -> float | None:
    """Seconds the study is expected to take (see the module), or None."""
    runs = sorted((p for p in Path(results_dir).iterdir() if (p / "run.json").exists() and p != exclude),
                  reverse=True) if Path(results_dir).is_dir() else []
    for run_dir in runs:
        try:
            info = read_run(run_dir) or {}
        except PerfkitError:
            continue
        st = (info.get("studies") or {}).get(study) or {}
        if info.get("params_name") == params_name and st.get("status") == "done" and st.get("wall_s"):
            return float(st["wall_s"])
    budget = getattr(section, "budget_s", None)
    return float(budget) if budget else None


class RunClock:
    """The run's time left: the expected time of the studies still to run, and of the running one less its
    elapsed time; None while any of them is unknown."""

    def __init__(self, expected: dict[str, float | None], order: list[str]):
        self.expected, self.left = expected, list(order)

    def start(self, study: str) -> None:
        if study in self.left:
            self.left = self.left[self.left.index(study):]

    def done(self, study: str) -> None:
        if study in self.left:
            self.left.remove(study)

    def left_s(self, current: str, elapsed_s: float) -> float | None:
        rest = [self.expected.get(s) for s in self.left[1:]] if self.left[:1] == [current] else \
            [self.expected.get(s) for s in self.left]
        cur = self.expected.get(current)
        if cur is None or any(x is None for x in rest):
            return None
        return max(0.0, cur - elapsed_s) + sum(rest)
