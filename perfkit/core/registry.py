"""One kind of registry for every plugin perfkit has (studies, server kinds): classes register themselves by
name when their module is imported, and :meth:`Registry.discover` imports every module of the home package,
every entry point of the group from installed packages, and the modules an environment variable names (a plugin
of your own that is not packaged). Whoever iterates a registry sees built-ins and plugins alike."""

from __future__ import annotations

import importlib
import os
import pkgutil
import threading
from importlib import metadata
from typing import Callable, Generic, TypeVar

from perfkit.core.errors import ConfigError, PerfkitError

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes of one plugin family by name.

    ``what``: the family in messages ("study", "server kind"); ``package``: the home package whose modules are
    imported on discovery (``packages_only``: only its sub-packages, a plugin being a folder); ``group``: the entry
    point group; ``env``: a variable naming more modules, comma-separated; ``order``: the sort key of
    :meth:`names`; ``check``: raises PerfkitError for a class that can't be one of these.
    """

    def __init__(self, what: str, package: str, group: str, env: str, *,
                 order: Callable[[type], object] = lambda c: 0, check: Callable[[type], None] | None = None,
                 packages_only: bool = False):
        self.what, self.package, self.group, self.env = what, package, group, env
        self._order, self._check, self._packages_only = order, check, packages_only
        self._classes: dict[str, type[T]] = {}
        self._lock = threading.RLock()
        self._discovered = False
        self._discovering = False
        self.version = 0  # bumped on every registration: what is built from the registry is rebuilt

    def register(self, cls: type[T], name: str | None = None) -> type[T]:
        """Make ``cls`` one of the family under ``name`` (default: its ``name`` attribute)."""
        key = name if name is not None else getattr(cls, "name", None)
        if not isinstance(key, str) or not key:
            raise PerfkitError(f"{self.what} class {cls.__name__}: `name` must be a non-empty string, got {key!r}")
        if self._check is not None:
            self._check(cls)
        with self._lock:
            old = self._classes.get(key)
            if old is not None and old.__qualname__ != cls.__qualname__:
                raise PerfkitError(f"two {self.what}s are named {key!r}: {old.__module__}.{old.__qualname__} and "
                                   f"{cls.__module__}.{cls.__qualname__}")
            self._classes[key] = cls
            self.version += 1
        return cls

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a plugin a test registered)."""
        with self._lock:
            if self._classes.pop(name, None) is not None:
                self.version += 1

    def discover(self) -> None:
        """Import every plugin known (once; again only for new names in the environment variable)."""
        with self._lock:
            if not self._discovered and not self._discovering:
                self._discovering = True  # a plugin's module importing the registry back must not recurse
                try:
                    home = importlib.import_module(self.package)
                    for m in pkgutil.iter_modules(home.__path__):
                        if m.ispkg or not self._packages_only:
                            importlib.import_module(f"{self.package}.{m.name}")
                    for ep in metadata.entry_points(group=self.group):
                        try:
                            ep.load()
                        except Exception as e:  # noqa: BLE001 - one broken plugin must not hide the others
                            raise PerfkitError(f"the {self.what} plugin {ep.name} ({ep.value}) failed to load: "
                                               f"{e}") from None
                    self._discovered = True
                finally:
                    self._discovering = False
            for mod in filter(None, (x.strip() for x in os.environ.get(self.env, "").split(","))):
                try:
                    importlib.import_module(mod)
                except ImportError as e:
                    raise ConfigError(f"${self.env}: cannot import the {self.what} module {mod!r}: {e}") from None

    def names(self) -> list[str]:
        """Every name, in the family's order (then by name)."""
        self.discover()
        with self._lock:
            return sorted(self._classes, key=lambda n: (self._order(self._classes[n]), n))

    def get_class(self, name: str) -> type[T]:
        """The class registered as ``name``; ConfigError naming the ones there are."""
        self.discover()
        with self._lock:
            cls = self._classes.get(name)
        if cls is None:
            raise ConfigError(f"unknown {self.what} {name!r}; allowed: {', '.join(self.names())}")
        return cls
