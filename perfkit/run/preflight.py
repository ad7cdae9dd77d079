"""Before any study starts, everything that can be checked is: does ``backend.url`` answer with the API the
parameter file names, does the server have every model the studies name, does the restart command exist, a
server log file that is named, and each study's own needs (a user's fleet answering, settings that need a
restart). One ``PerfkitError`` lists every problem, each naming the file and the key."""

from __future__ import annotations

import shutil
from pathlib import Path

from perfkit.client import backends
from perfkit.client.probe import probe
from perfkit.core.errors import PerfkitError
from perfkit.core.secrets import redact_text
from perfkit.studies import registry


def check_backend(params, params_path: str | Path, timeout_s: float = 10.0) -> str:
    """What was reached ('ollama 0.33.0 at http://…'), '' for the embedded engine; PerfkitError otherwise."""
    b = params.backend
    if b.kind == "embedded":
        return ""
    return probe(b.kind, b.url, dict(b.headers), f"{params_path}: backend.url {redact_text(b.url)}", timeout_s)


def _has(kind: str, names: list[str], model: str) -> bool:
    if kind == "ollama":  # Ollama resolves a bare name to its ":latest" tag, case-insensitively
        want = {model.lower(), f"{model.lower()}:latest"} if ":" not in model else {model.lower()}
        return any(n.lower() in want for n in names)
    return model in names


def check_models(params, params_path: str | Path) -> list[str]:
    """Models the studies name that the server does not have (a server that can't list its models: none)."""
    b = params.backend
    if b.kind == "embedded":
        return []
    be = backends.create(b.kind, b.url, headers=b.headers, endpoint=b.endpoint, inspect_host=False)
    try:
        names = be.models()
    except Exception:  # noqa: BLE001 - a server that can't list its models is checked by its first request
        return []
    finally:
        be.close()
    return [f"{params_path}: {key}: the server has no model {model!r}; it has: {', '.join(sorted(names)[:12]) or 'none'}"
            for key, model in params.models_used() if not _has(b.kind, names, model)]


def check_local(params, params_path: str | Path) -> list[str]:
    """The restart command's program and a server log file, where the parameters name them."""
    b, out = params.backend, []
    if b.restart_command:
        exe = b.restart_command[0]
        if not (Path(exe).is_file() or shutil.which(exe)):
            out.append(f"{params_path}: backend.restart_command: {exe!r} is not a program found here")
    if b.server_log is not None and b.server_log.file and not Path(b.server_log.file).expanduser().is_file():
        out.append(f"{params_path}: backend.server_log.file: {b.server_log.file} does not exist")
    if b.server_log is not None and b.server_log.command:
        exe = b.server_log.command[0]
        if not (Path(exe).is_file() or shutil.which(exe)):
            out.append(f"{params_path}: backend.server_log.command: {exe!r} is not a program found here")
    return out


def check(params, params_path: str | Path, studies: list[str]) -> str:
    """Every check above and each chosen study's own; returns what was reached, raises one PerfkitError
    listing every problem otherwise."""
    reached = check_backend(params, params_path)
    problems = check_local(params, params_path) + check_models(params, params_path)
    for s in studies:
        problems += [f"{params_path}: {p}" for p in registry.get(s).preflight(params)]
    if problems:
        raise PerfkitError("nothing was measured; fix these first:\n" + "\n".join(f"  - {p}" for p in problems))
    return reached
