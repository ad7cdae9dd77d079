"""A Ctrl-C that Python swallowed still stops a measurement.

Python raises KeyboardInterrupt wherever the main thread is when the signal lands; inside a weakref callback or a
``__del__`` (where exceptions are only printed) it is lost, and the measurement would go on to the end. While a
study measures, a Ctrl-C is also noted, and the next phase to start (:func:`check`) raises it again."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_pending = threading.Event()


def _handler(signum, frame):
    _pending.set()
    raise KeyboardInterrupt


@contextmanager
def noted() -> Iterator[None]:
    """Note every Ctrl-C while the block runs (only where Python's own handler is in place, in the main thread:
    a notebook kernel's or an application's handler is left alone)."""
    ours = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if ours:
        signal.signal(signal.SIGINT, _handler)
    _pending.clear()
    try:
        yield
    finally:
        _pending.clear()
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def check() -> None:
    """Where a new phase of work starts: a Ctrl-C that was noted and swallowed stops it here."""
    if _pending.is_set() and threading.current_thread() is threading.main_thread():
        _pending.clear()
        raise KeyboardInterrupt
