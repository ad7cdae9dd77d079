"""Server backends behind one interface, registered by name and built by :func:`create`: Ollama's native
API, llama.cpp's llama-server (the embedded engine is one), and any OpenAI-compatible server."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from perfkit.client.backends.base import DEFAULT_TIMEOUT_S, Backend, Capabilities, ModelFacts, Sampling
from perfkit.client.backends.llamacpp import LlamaServerBackend
from perfkit.client.backends.ollama import OllamaBackend
from perfkit.client.backends.openai import OpenAIBackend
from perfkit.core.errors import ConfigError

# kind (as parameter files name it) → backend class; "embedded" is llama-server started by perfkit.
REGISTRY: dict[str, type[Backend]] = {"ollama": OllamaBackend, "llama-server": LlamaServerBackend,
                                      "openai": OpenAIBackend, "embedded": LlamaServerBackend}


# Kinds whose server perfkit starts itself (the same API class as a user's llama-server).
STARTED_BY_PERFKIT = frozenset({"embedded"})


def capabilities(kind: str) -> Capabilities:
    """What the backend of ``kind`` can do (before any server is reached)."""
    caps = _cls(kind).capabilities
    return dataclasses.replace(caps, started_by_perfkit=True) if kind in STARTED_BY_PERFKIT else caps


def tuning_space(kind: str) -> dict[str, list]:
    """The settings the backend of ``kind`` offers to `perfkit tune` by default ({} when none)."""
    return {k: list(v) for k, v in _cls(kind).tuning_space.items()}


def _cls(kind: str) -> type[Backend]:
    try:
        return REGISTRY[kind]
    except KeyError:
        raise ConfigError(f"unknown backend kind {kind!r}; allowed: {', '.join(REGISTRY)}") from None


def create(kind: str, url: str | None = None, *, engine=None, headers: Mapping[str, str] | None = None,
           endpoint: str = "chat", restart_command: list[str] | None = None, log=None,
           ready_timeout_s: float = 120.0, inspect_host: bool = True, control=None, **_: Any) -> Backend:
    """The backend of ``kind`` for ``url`` (or, for ``embedded``, for the running ``engine``).

    ``headers`` are sent and never recorded. ``inspect_host``: look for the server's processes, log and
    files on this host (Ollama); False sees only its HTTP API (a fleet's servers seen as a client does).
    ``control``: the server's controller when the caller has one (an agent on the server's host).
    """
    if kind in STARTED_BY_PERFKIT:
        if engine is None:
            raise ConfigError("the embedded backend needs a running engine")
        return LlamaServerBackend.from_engine(engine)
    if not url:
        raise ConfigError(f"backend kind {kind!r} needs a url")
    kw = {"control": control} if control is not None else {}
    return _cls(kind).create(url, headers=headers, endpoint=endpoint, restart_command=restart_command, log=log,
                             ready_timeout_s=ready_timeout_s, inspect_host=inspect_host, **kw)


__all__ = ["Backend", "Capabilities", "ModelFacts", "Sampling", "DEFAULT_TIMEOUT_S", "LlamaServerBackend",
           "OllamaBackend", "OpenAIBackend", "REGISTRY", "capabilities", "create", "tuning_space"]
