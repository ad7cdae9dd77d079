"""Server kinds, each one plugin: registered by name (:func:`register`, a class decorator) when its folder is
imported, found by discovery like studies (the sub-packages of this package, the ``perfkit.kinds`` entry points,
``$PERFKIT_KINDS``). Parameters, sessions, preflight and studies ask a kind by its name here and never branch on
which it is; what differs between servers is what the kind declares."""

from __future__ import annotations

from typing import Any, Mapping

from perfkit.client.backends.base import Backend, Capabilities
from perfkit.client.probe import probe as _probe_url
from perfkit.core.registry import Registry
from perfkit.kinds.base import ServerKind

ENV = "PERFKIT_KINDS"
KINDS: Registry[ServerKind] = Registry("server kind", "perfkit.kinds", "perfkit.kinds", ENV,
                                       order=lambda c: c.order, packages_only=True)


def register(cls: type[ServerKind]) -> type[ServerKind]:
    """Class decorator: make ``cls`` a server kind (``backend.kind: <cls.name>``)."""
    return KINDS.register(cls)


def unregister(name: str) -> None:
    KINDS.unregister(name)


def names() -> list[str]:
    return KINDS.names()


def get(name: str) -> ServerKind:
    """The kind named ``name``; ConfigError naming the ones there are."""
    return KINDS.get_class(name)()


def generic() -> str:
    """The kind that speaks the common /v1 chat-completions protocol to any server (a proxy's, a fleet's)."""
    return next(n for n in names() if get(n).generic)


def capabilities(kind: str) -> Capabilities:
    """What the backend of ``kind`` can do (before any server is reached)."""
    return get(kind).capabilities


def tuning_space(kind: str) -> dict[str, list]:
    """The settings ``kind`` offers to `perfkit tune` by default, by their canonical names ({} when none)."""
    from perfkit.core.settings import name_of

    return {name_of(role): list(v) for role, v in get(kind).tuning_space.items()}


def create(kind: str, url: str | None = None, *, engine=None, headers: Mapping[str, str] | None = None,
           **opts: Any) -> Backend:
    """The backend of ``kind`` for ``url`` (or, for a kind perfkit starts, for the running ``engine``).

    ``headers`` are sent and never recorded. ``inspect_host``: look for the server's processes, log and files on
    this host; False sees only its HTTP API (a fleet's servers seen as a client does). ``control``: the server's
    controller when the caller has one (an agent on the server's host).
    """
    return get(kind).create_backend(url, engine=engine, headers=headers, **opts)


def probe(kind: str, url: str, headers: dict[str, str] | None, where: str, timeout_s: float = 10.0) -> str:
    """What answers at ``url`` when it is a ``kind`` server, in words; PerfkitError starting with ``where``
    otherwise; '' for a kind that is not checked this way."""
    spec = get(kind).probe
    return _probe_url(spec, url, headers, where, timeout_s) if spec is not None else ""


def restore_pending(record) -> Any:
    """The server a killed run left on perfkit's settings given its own back, by whichever kind wrote ``record``
    (a RestartInfo); None when there was nothing to give back."""
    for n in names():
        info = get(n).restore_pending(record)
        if info is not None:
            return info
    return None


__all__ = ["KINDS", "ServerKind", "capabilities", "create", "generic", "get", "names", "probe", "register", "restore_pending", "tuning_space",
           "unregister", "version_keys"]
