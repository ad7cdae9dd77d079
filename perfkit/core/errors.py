"""One exception type for every problem a user can fix: the CLI prints its message, no traceback."""

from __future__ import annotations


class PerfkitError(Exception):
    """A user-facing error: the message names the cause and what is allowed."""


class ConfigError(PerfkitError):
    """Bad input: a parameter file, a setting or a value."""


class EngineError(PerfkitError):
    """The embedded engine is missing, will not start, or a model will not load."""
