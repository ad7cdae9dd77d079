"""The one list of studies. A study registers itself (:func:`register`, a class decorator) when its module is
imported; :func:`discover` imports every module of this package, every ``perfkit.studies`` entry point of the
installed packages, and the modules named in ``$PERFKIT_STUDIES`` (comma-separated, for a study of your own
that is not packaged). Parameters, the run pipeline, the results index and compare all iterate this
registry: adding a study means adding its module, its notebook and its parameter section, nothing else."""

from __future__ import annotations

import importlib
import os
import pkgutil
import threading
from importlib import metadata
from typing import TYPE_CHECKING

from perfkit.core.errors import ConfigError, PerfkitError

if TYPE_CHECKING:
    from perfkit.studies.base import Study

ENV = "PERFKIT_STUDIES"
ENTRY_POINT_GROUP = "perfkit.studies"
_STUDIES: dict[str, "type[Study]"] = {}
_LOCK = threading.RLock()
_discovered = False
_version = 0  # bumped on every registration: the parameter model is rebuilt when it changes


def register(cls: "type[Study]") -> "type[Study]":
    """Class decorator: make ``cls`` (a :class:`perfkit.studies.base.Study`) a study of perfkit."""
    global _version
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise PerfkitError(f"study class {cls.__name__}: `name` must be an identifier (it is the parameter "
                           f"section and the directory of its data), got {name!r}")
    with _LOCK:
        old = _STUDIES.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise PerfkitError(f"two studies are named {name!r}: {old.__module__}.{old.__qualname__} and "
                               f"{cls.__module__}.{cls.__qualname__}")
        _STUDIES[name] = cls
        _version += 1
    return cls


def unregister(name: str) -> None:
    """Forget the study ``name`` (a plugin a test registered)."""
    global _version
    with _LOCK:
        if _STUDIES.pop(name, None) is not None:
            _version += 1


def discover() -> None:
    """Import every study perfkit knows of (once; again only for new names in ``$PERFKIT_STUDIES``)."""
    global _discovered
    with _LOCK:
        if not _discovered:
            from perfkit import studies

            for m in pkgutil.iter_modules(studies.__path__):
                importlib.import_module(f"{studies.__name__}.{m.name}")
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                try:
                    ep.load()
                except Exception as e:  # noqa: BLE001 - one broken plugin must not hide the others
                    raise PerfkitError(f"the study plugin {ep.name} ({ep.value}) failed to load: {e}") from None
            _discovered = True
        for mod in filter(None, (x.strip() for x in os.environ.get(ENV, "").split(","))):
            try:
                importlib.import_module(mod)
            except ImportError as e:
                raise ConfigError(f"${ENV}: cannot import the study module {mod!r}: {e}") from None


def names() -> list[str]:
    """Every study, in the order a run measures them (each study's ``order``, then its name)."""
    discover()
    with _LOCK:
        return sorted(_STUDIES, key=lambda n: (_STUDIES[n].order, n))


def get(name: str) -> "Study":
    """An instance of the study named ``name``; ConfigError naming the ones there are."""
    discover()
    with _LOCK:
        cls = _STUDIES.get(name)
    if cls is None:
        raise ConfigError(f"unknown study {name!r}; allowed: {', '.join(names())}")
    return cls()


def version() -> int:
    discover()
    return _version
