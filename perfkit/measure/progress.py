"""How far a study has got, for whoever is watching: a progress bar in a notebook (tqdm's, which JupyterLab
draws as a widget) and a small file, ``progress.json`` in the study's directory, that ``perfkit run`` reads
to print a live line while the study's kernel measures. Written at most twice a second; never on the
request path of a load series (only between its requests' ends)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from perfkit.core import interrupts

FILE_NAME = "progress.json"


class Progress:
    """One phase of a study: ``total`` steps (trials or requests) named by ``desc``; ``current`` names what is
    being measured now (a cache state, a setting)."""

    def __init__(self, store_dir: Path, desc: str, total: int, *, interactive: bool = False):
        interrupts.check()  # a new phase: a Ctrl-C Python swallowed during the last one stops the study here
        self.path = Path(store_dir) / FILE_NAME
        self.desc, self.total, self.done, self.current = desc, int(total), 0, ""
        self.t0 = time.time()
        self._last = 0.0
        self._bar = None
        if interactive:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)
        self._write(force=True)

    def update(self, n: int = 1, current: str | None = None) -> None:
        self.done += n
        if current is not None:
            self.current = current
        if self._bar is not None:
            self._bar.update(n)
            if current:
                self._bar.set_postfix_str(current, refresh=False)
        self._write()

    def _write(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < 0.5 and self.done < self.total:
            return
        self._last = now
        data = {"phase": self.desc, "done": self.done, "total": self.total, "current": self.current,
                "started_unix": self.t0, "updated_unix": now}
        try:
            tmp = self.path.with_name(f".{FILE_NAME}.{os.getpid()}")
            tmp.write_text(json.dumps(data))
            tmp.replace(self.path)
        except OSError:  # progress is a courtesy: never a reason to stop measuring
            pass

    def close(self) -> None:
        self._write(force=True)
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read(store_dir: Path) -> dict | None:
    try:
        return json.loads((Path(store_dir) / FILE_NAME).read_text())
    except (OSError, ValueError):
        return None
