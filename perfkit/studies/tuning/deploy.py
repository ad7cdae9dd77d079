"""The tuned settings written out to deploy: each server kind's own files (an environment file, a systemd
drop-in, a command line …) and an nginx snippet whose read timeout covers the measured cold start. Each file says
which run found it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perfkit import kinds
from perfkit.core.settings import KEEP_ALIVE, name_of

from .params import OBJECTIVES
from .thinking import deploy_comment


def objective_words(res: Any) -> str:
    """The objective the winner was best for, in words (as the analysis judged it)."""
    return res.objective_what if getattr(res, "objective_tag", "") else OBJECTIVES[res.objective][1]


def write(out: Path, res: Any, kind: str, run_id: str, model: str) -> dict[str, str]:
    """Write the files under ``out``; returns name → path relative to the run directory (for the report). The
    settings mean the same to every kind, so each kind's files are written (the kind measured first)."""
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(res.winner_settings)
    if res.cold.get("cold_e2e") is not None:
        settings.setdefault(name_of(KEEP_ALIVE), "-1")  # the cold start measured is what a warm model avoids
    head = (f"# perfkit tune, run {run_id}: {res.winner} was the best for {objective_words(res)} of the candidates "
            "measured\n# (see tuning.html in that run for the evidence and the before/after proof).\n"
            + deploy_comment(settings))
    files: dict[str, str] = {}
    for name in [kind] + [k for k in kinds.names() if k != kind]:
        for path, text in kinds.get(name).deploy_files(settings, head, model).items():
            files.setdefault(path, text)
    timeout = res.cold.get("proxy_read_timeout_s")
    if timeout:
        files["nginx.conf"] = (head + f"# The slowest cold start measured took {res.cold['worst_cold_s']:.1f} s: the "
                               "proxy waits three times that before giving up.\n"
                               f"proxy_read_timeout {timeout}s;\nproxy_send_timeout {timeout}s;\n"
                               "proxy_buffering off;  # tokens reach the client as they are made\n")
    written = {}
    for name, text in files.items():
        p = out / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        written[name] = str(p.relative_to(out.parent.parent))
    return written
