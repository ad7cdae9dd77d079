"""A Ctrl-C that lands where Python only prints exceptions (a weakref callback, a ``__del__``) still stops the study:
the next phase to start raises it."""

import signal

import pytest

from perfkit.core import interrupts
from perfkit.measure.progress import Progress


class _Swallows:
    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # its KeyboardInterrupt is raised here, printed and lost


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_python_swallowed_stops_the_next_phase(tmp_path):
    with interrupts.noted():
        Progress(tmp_path, "first", 2)
        s = _Swallows()
        del s  # swallowed: without the note, the study would go on to its end
        with pytest.raises(KeyboardInterrupt):
            Progress(tmp_path, "next", 2)
        Progress(tmp_path, "then", 2)  # raised once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's own handler is back


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_outside_a_measurement_nothing_is_noted(tmp_path):
    s = _Swallows()
    del s
    Progress(tmp_path, "phase", 1)
