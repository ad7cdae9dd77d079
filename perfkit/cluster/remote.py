"""The questions the driver may ask an agent, listed once: the agent's dispatch and the driver's proxy are built
from that list.

Each entry is a method of an interface — the controller interface (``ServerControl``) or what an agent answers
itself (:class:`AgentExtras`) — with that method's own signature and answer type, so adding a question is one
line in :data:`METHODS` (and, for a new controller method, its definition on the controller). Arguments and
answers cross the wire as plain data and are rebuilt on the driver as the declared type (a ``RestartInfo``, a
``Path``, ``dict[str, SettingCheck]`` ...). An ``Unknown`` crosses as its message and is raised again on the
driver, as a local controller would raise it; any other error crosses as the transport carries it.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

from perfkit.servers.control.base import RestartInfo, ServerControl, Unknown


class NotRemote(Unknown):
    """A question that is not on the list the agent (or the proxy) was built from: said, not sent."""


class AgentExtras:
    """What an agent answers itself, beyond its controller's questions: the server's log in pieces (a log source
    is an object of the host's, it can't cross the wire) and, for a server the agent started, a crash and a
    revival (the fleet's failover)."""

    def log_mark(self) -> Any:
        """The position in the server's log from which ``log_read_since`` reads."""
        raise NotImplementedError

    def log_read_since(self, mark: Any) -> list[str]:
        """The log's lines written since ``mark``."""
        raise NotImplementedError

    def log_describe(self) -> str | None:
        """Where the server's log comes from; None when there is none."""
        raise NotImplementedError

    def can_kill(self) -> bool:
        """Whether perfkit may crash the server (it started it)."""
        raise NotImplementedError

    def kill(self) -> int:
        """SIGKILL the server as a crash would; when (the host's perf_counter ns)."""
        raise NotImplementedError

    def revive(self) -> RestartInfo:
        """Start a killed server again on its last settings."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class RemoteMethod:
    """One question: ``interface.name``, answered on the host by the object there that is an ``interface``.

    ``host_args``: parameters the host fills with its own objects (the driver's don't cross the wire).
    """

    name: str
    interface: type
    signature: inspect.Signature
    answer: Any
    doc: str | None
    host_args: tuple[str, ...] = ()


def remote_methods(interface: type, *names: str, host_args: Sequence[str] = ()) -> tuple[RemoteMethod, ...]:
    """``interface``'s methods ``names`` as remote methods, each with its signature and declared answer type. A
    name the interface lacks fails here, at import, rather than on the first question."""
    out = []
    for name in names:
        fn = inspect.getattr_static(interface, name, None)
        if not inspect.isfunction(fn):
            raise TypeError(f"{interface.__name__}.{name} is not a method: it can't be a remote method")
        sig = inspect.signature(fn)
        missing = [a for a in host_args if a not in sig.parameters]
        if missing:
            raise TypeError(f"{interface.__name__}.{name} has no parameter {', '.join(missing)}")
        out.append(RemoteMethod(name, interface, sig, typing.get_type_hints(fn).get("return", Any),
                                inspect.getdoc(fn), tuple(host_args)))
    return tuple(out)


# Every question the driver may ask an agent. A controller method left out is refused by the proxy (NotRemote)
# unless the driver answers it itself (perfkit.cluster.control.AgentControl).
METHODS: tuple[RemoteMethod, ...] = (
    *remote_methods(ServerControl, "restart", "can_restart", "settings_in_effect", "model_file", "file_cache",
                    "read_bandwidth", "wait_memory_released", "slots"),
    # The host's own client asks its server what runs where; the driver's client is no use there.
    *remote_methods(ServerControl, "device", host_args=("backend",)),
    *remote_methods(AgentExtras, "log_mark", "log_read_since", "log_describe", "can_kill", "kill", "revive"),
)


def interface_methods(interface: type) -> list[str]:
    """The public methods ``interface`` itself declares."""
    return [n for n, v in vars(interface).items() if inspect.isfunction(v) and not n.startswith("_")]


# ---- the wire: plain data both ways --------------------------------------------------------------------------
def to_wire(value: Any) -> Any:
    """``value`` as plain data: a dataclass as a dict of its fields (not its properties), a path as a string."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_wire(v) for v in value]
    if isinstance(value, tuple):  # an opaque answer (a log mark) must come back as itself
        return tuple(to_wire(v) for v in value)
    return value


def from_wire(hint: Any, data: Any) -> Any:
    """Plain data rebuilt as the type ``hint`` declares (what ``to_wire`` made of it); what it can't tell is kept."""
    if data is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return from_wire(kinds[0], data) if len(kinds) == 1 else data
    if origin is dict and len(args) == 2:
        return {k: from_wire(args[1], v) for k, v in data.items()}
    if origin is list and args:
        return [from_wire(args[0], v) for v in data]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint(**data)
    if hint is Path:
        return Path(data)
    return data


# Errors that cross as (status, message) and are raised again on the driver as the same class.
_CARRIED: dict[str, type[Unknown]] = {"refused": NotRemote, "unknown": Unknown}


def serve(methods: Iterable[RemoteMethod], name: str, kwargs: Mapping[str, Any], answerers: Sequence[object],
          host_objects: Mapping[str, Any]) -> tuple[str, Any]:
    """The agent's dispatch: ``name`` asked with ``kwargs``, answered by the one of ``answerers`` that is the
    method's interface, with ``host_objects`` for its host arguments. Returns ("ok", the answer as plain data) or
    (status, message) of an ``Unknown``; a name not in ``methods`` is refused, whatever the answerers have."""
    m = next((m for m in methods if m.name == name), None)
    if m is None:
        return "refused", f"the agent is not asked {name}(): it is not one of its remote methods " \
                          "(perfkit.cluster.remote.METHODS)"
    target = next((t for t in answerers if isinstance(t, m.interface)), None)
    if target is None:
        return "unknown", f"nothing on this host answers {m.interface.__name__}.{name}()"
    try:
        return "ok", to_wire(getattr(target, name)(**kwargs, **{a: host_objects.get(a) for a in m.host_args}))
    except NotRemote as e:
        return "refused", str(e)
    except Unknown as e:
        return "unknown", str(e)


# ---- the driver's side ---------------------------------------------------------------------------------------
class RemoteProxy(ServerControl, AgentExtras):
    """A controller answered elsewhere. ``class P(RemoteProxy, methods=...)`` gets one method per entry, with the
    interface's signature and docstring, that sends the arguments as plain data through :meth:`send` and
    rebuilds the answer as the declared type. An interface method that is neither listed nor defined by a
    subclass refuses (``NotRemote``) instead of falling back to the base class's answer for a local server."""

    methods: ClassVar[tuple[RemoteMethod, ...]] = ()

    def __init_subclass__(cls, methods: Sequence[RemoteMethod] | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if methods is None:
            return
        cls.methods = tuple(methods)
        names = [m.name for m in cls.methods]
        if len(set(names)) < len(names):
            raise TypeError(f"{cls.__name__}: a remote method listed twice ({', '.join(sorted(names))})")
        for m in cls.methods:
            setattr(cls, m.name, _caller(cls, m))
        listed = set(names)
        for interface in (ServerControl, AgentExtras):
            for name in interface_methods(interface):
                if name not in listed and getattr(cls, name) is vars(interface)[name]:
                    setattr(cls, name, _refuser(cls, name))

    def send(self, name: str, kwargs: dict[str, Any]) -> tuple[str, Any]:
        """The transport: ask the agent ``name`` with ``kwargs``; its (status, answer) as ``serve`` gives them."""
        raise NotImplementedError


def refused_methods(cls: type) -> list[str]:
    """The interface methods ``cls`` refuses (neither on its list nor answered by itself)."""
    return [n for i in (ServerControl, AgentExtras) for n in interface_methods(i)
            if getattr(getattr(cls, n), "refuses", False)]


def _caller(cls: type, m: RemoteMethod) -> Callable[..., Any]:
    def call(self: RemoteProxy, *args: Any, **kwargs: Any) -> Any:
        bound = m.signature.bind(self, *args, **kwargs)
        sent = {k: to_wire(v) for k, v in list(bound.arguments.items())[1:] if k not in m.host_args}
        status, value = self.send(m.name, sent)
        if status == "ok":
            return from_wire(m.answer, value)
        raise _CARRIED.get(status, Unknown)(value)

    return _named(call, cls, m.name, m.doc, m.signature)


def _refuser(cls: type, name: str) -> Callable[..., Any]:
    def refuse(self: RemoteProxy, *args: Any, **kwargs: Any) -> Any:
        raise NotRemote(f"{type(self).__name__}.{name}(): not a remote method, so the agent is not asked (add it "
                        "to perfkit.cluster.remote.METHODS, or answer it on the driver)")

    refuse.refuses = True  # type: ignore[attr-defined]
    return _named(refuse, cls, name, f"Refused: {name} is not on this proxy's list.", None)


def _named(fn: Callable[..., Any], cls: type, name: str, doc: str | None,
           signature: inspect.Signature | None) -> Callable[..., Any]:
    """``fn`` as ``cls.name`` to readers, ``help`` and tracebacks."""
    fn.__name__, fn.__qualname__, fn.__doc__, fn.__module__ = name, f"{cls.__qualname__}.{name}", doc, cls.__module__
    if signature is not None:
        fn.__signature__ = signature  # type: ignore[attr-defined]
    return fn


class AgentProxy(RemoteProxy, methods=METHODS):
    """Every question of :data:`METHODS`, asked through ``send``; a subclass overrides one to add what the
    driver knows (``super()`` asks)."""
