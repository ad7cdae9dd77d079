"""A live line per study while ``perfkit run`` waits for the study's kernel: what it measures now, how many of
how many, elapsed time and an estimate of what is left. On a terminal the line updates in place; into a log
file (``perfkit run ... > run.log``) a new line is written every ``LOG_EVERY_S`` seconds or when the phase
changes, so a run that takes minutes never looks silent."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, TextIO

from perfkit.core import fmt
from perfkit.measure import progress as measure_progress

LOG_EVERY_S = 15.0


class Watcher:
    """Called every second while the study runs (``tick``); ``finish`` ends an in-place line."""

    def __init__(self, study: str, study_dir: Path, out: TextIO | None = None, label: str = "",
                 run_left_s: Callable[[float], float | None] | None = None):
        self.study, self.dir, self.out = study, Path(study_dir), out or sys.stdout
        self.label = label
        self.run_left_s = run_left_s  # elapsed in this study → the whole run's seconds left, or None
        self.t0 = time.time()
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self._last_line = ""
        self._last_t = 0.0
        self._last_phase = None

    def _line(self) -> str | None:
        candidates = [self.dir] + sorted(self.dir.glob("r[0-9]*"))
        states = [p for p in (measure_progress.read(d) for d in candidates) if p]
        if not states:
            return None
        p = max(states, key=lambda x: x.get("updated_unix", 0))
        done, total = int(p.get("done", 0)), int(p.get("total", 0))
        elapsed = time.time() - self.t0
        phase_elapsed = max(0.0, p.get("updated_unix", time.time()) - p.get("started_unix", time.time()))
        eta = ""
        if total and 0 < done < total:
            eta = f" · about {fmt.duration(phase_elapsed / done * (total - done))} left in this phase"
        count = f"{done}/{total}" if total else f"{done}"
        current = f" ({p['current']})" if p.get("current") else ""
        left = self.run_left_s(elapsed) if self.run_left_s else None
        whole = f" · the whole run: about {fmt.duration(left)} left" if left is not None else ""
        return (f"[{self.study}]{self.label} {p.get('phase', '')} {count}{current} · {fmt.duration(elapsed)} "
                f"elapsed{eta}{whole}")

    def tick(self) -> None:
        line = self._line()
        if line is None:
            return
        now = time.time()
        if self.tty:
            if line != self._last_line:
                self.out.write("\r\x1b[2K" + line[:200])
                self.out.flush()
        else:
            phase = line.split(" ", 2)[1] if " " in line else line
            if now - self._last_t >= LOG_EVERY_S or phase != self._last_phase:
                self.out.write(line + "\n")
                self.out.flush()
                self._last_t, self._last_phase = now, phase
        self._last_line = line

    def finish(self) -> None:
        if self.tty and self._last_line:
            self.out.write("\r\x1b[2K")
            self.out.flush()
