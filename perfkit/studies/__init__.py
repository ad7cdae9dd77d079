"""The studies: each answers one question, registered by name (:mod:`perfkit.studies.registry`), with its own
parameter section, notebook and figures. A notebook calls :func:`run_or_load` and plots the result."""

from perfkit.studies.base import Study, StudyContext, StudyResult, run_or_load
from perfkit.studies.registry import get, names, register

__all__ = ["Study", "StudyContext", "StudyResult", "run_or_load", "register", "get", "names"]
