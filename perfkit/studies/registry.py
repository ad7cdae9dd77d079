"""The one list of studies. A study registers itself (:func:`register`, a class decorator) when its module is
imported; discovery imports every module of this package, every ``perfkit.studies`` entry point of the
installed packages, and the modules named in ``$PERFKIT_STUDIES`` (comma-separated, for a study of your own
that is not packaged). Parameters, the run pipeline, the results index and compare all iterate this
registry: adding a study means adding its module, its notebook and its parameter section, nothing else."""

from __future__ import annotations

from typing import TYPE_CHECKING

from perfkit.core.errors import PerfkitError
from perfkit.core.registry import Registry

if TYPE_CHECKING:
    from perfkit.studies.base import Study

ENV = "PERFKIT_STUDIES"
ENTRY_POINT_GROUP = "perfkit.studies"


def _check(cls: type) -> None:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise PerfkitError(f"study class {cls.__name__}: `name` must be an identifier (it is the parameter "
                           f"section and the directory of its data), got {name!r}")


STUDIES: "Registry[Study]" = Registry("study", "perfkit.studies", ENTRY_POINT_GROUP, ENV,
                                      order=lambda c: getattr(c, "order", 0), check=_check)


def register(cls: "type[Study]") -> "type[Study]":
    """Class decorator: make ``cls`` (a :class:`perfkit.studies.base.Study`) a study of perfkit."""
    return STUDIES.register(cls)


def unregister(name: str) -> None:
    """Forget the study ``name`` (a plugin a test registered)."""
    STUDIES.unregister(name)


def discover() -> None:
    STUDIES.discover()


def names() -> list[str]:
    """Every study, in the order a run measures them (each study's ``order``, then its name)."""
    return STUDIES.names()


def get(name: str) -> "Study":
    """An instance of the study named ``name``; ConfigError naming the ones there are."""
    return STUDIES.get_class(name)()


def version() -> int:
    STUDIES.discover()
    return STUDIES.version
