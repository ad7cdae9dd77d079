"""What a server lets perfkit see and do beyond its API: one controller per backend.

A study asks the same questions of every server — restart it with settings, which settings are
in effect and how we know, which processes to sample, where the model file and the server's log
are, what hardware runs the model — and never branches on the backend. A controller that can't
see something answers with the reason (``Unknown``), and reports print that reason.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

from perfkit.core.errors import PerfkitError

SETTING_STATUSES = ("confirmed", "not applied", "unverifiable")


@dataclass
class SettingCheck:
    """Whether one server setting took effect.

    ``status``: confirmed | not applied (``effective`` says what the server runs instead) |
    unverifiable (``evidence`` says why). ``evidence`` names the source: a log line, a command line,
    ``/proc/PID/environ``, the server's own properties.
    """

    name: str
    wanted: str
    status: str
    effective: str | None = None
    evidence: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RestartInfo:
    """One restart: when it was asked for and when the *new* server answered (perf_counter ns)."""

    t_restart_ns: int
    t_ready_ns: int
    wall_restart_unix_s: float
    pid_before: int | None = None
    pid_after: int | None = None

    @property
    def ready_s(self) -> float:
        """Restart → the new server answers (s)."""
        return (self.t_ready_ns - self.t_restart_ns) * 1e-9

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ready_s": self.ready_s}


@dataclass
class Device:
    """The hardware that runs a model, and the memory bandwidth that bounds its decode speed.

    ``kind``: cpu | gpu | gpu+cpu (partial offload) | unknown. ``memory_bandwidth_bytes_s`` is the
    limit of that device (bytes/s; for a partial offload the GPU's, with ``cpu_share`` saying how
    much of the model runs on the CPU instead). ``unknown_because`` is set whenever a figure can't be
    known, e.g. for a server on another host.
    """

    kind: str
    name: str | None = None
    memory_bandwidth_bytes_s: float | None = None
    bandwidth_source: str | None = None
    gpu_indices: list[int] = field(default_factory=list)
    cpu_share: float | None = None
    offload_evidence: str | None = None
    unknown_because: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_record(self) -> dict[str, Any]:
        """Flat fields for an event row (``kind`` is the event's own key there, so it is ``device``)."""
        d = asdict(self)
        d["device"], d["device_name"] = d.pop("kind"), d.pop("name")
        return d


@runtime_checkable
class Killable(Protocol):
    """A controller that can kill its server outright (a crash, for a fleet's failover) and start it again."""

    def can_kill(self) -> bool: ...

    def kill(self) -> int: ...

    def revive(self) -> "RestartInfo": ...


@runtime_checkable
class HostView(Protocol):
    """A controller that samples the server's own host where it runs (an agent there): ``view`` starts it."""

    def view(self, interval_s: float, gpu: bool = True) -> Any: ...


@runtime_checkable
class WallClock(Protocol):
    """A controller on another host whose clock is measured against the run's: ``clock`` has ``wall_offset_s``
    (its wall clock minus ours, s) and ``uncertainty_ns``."""

    clock: Any


@runtime_checkable
class PrefixCacheReset(Protocol):
    """A controller that can empty the server's prefix cache (so a run never measures what an earlier one warmed);
    returns what happened, in words."""

    def reset_prefix_cache(self) -> str: ...


class Unknown(PerfkitError):
    """A fact this controller can't see; the message says why (it goes into reports as is)."""


class ServerControl(abc.ABC):
    """The questions every study asks of a server, whatever it is.

    ``is_local``: the server runs on this host (its processes, files and log are readable).
    """

    name = "server"
    # Where a controller that changes a user's server settings writes how to give them back (the session
    # sets it to a file in the study's directory); None: it changes nothing of theirs.
    restore_record: Path | None = None
    is_local = False

    # ---- lifecycle -------------------------------------------------------------------------------
    def restart(self, settings: Mapping[str, Any] | None) -> RestartInfo:
        """Restart with these (Ollama-named) settings (None: the ones in effect) and wait until the new
        server answers."""
        raise Unknown(f"{self.name}: perfkit can't restart this server ({self.why_not_local()})")

    def can_restart(self) -> bool:
        return False

    def restore(self) -> RestartInfo | None:
        """Give a user's server back the settings it had before perfkit restarted it; None: nothing to give back."""
        return None

    def recover(self) -> RestartInfo | None:
        """Before perfkit touches the server: give it back its own settings if a perfkit that is gone left it on
        others; None when there was nothing to give back."""
        return None

    # ---- what it runs ------------------------------------------------------------------------------
    def settings_in_effect(self, wanted: Mapping[str, Any], model: str | None = None) -> dict[str, SettingCheck]:
        from perfkit.core.settings import validate_settings

        return {k: SettingCheck(k, v, "unverifiable", None, self.why_not_local())
                for k, v in validate_settings(wanted).items()}

    def server_pids(self) -> list[int]:
        """Root pids of the server's process tree (the sampler adds descendants); [] when not visible."""
        return []

    def model_file(self, model: str) -> Path:
        """The model's file on this host (what cold_disk evicts and the load floor reads)."""
        raise Unknown(f"the model file is unknown, because {self.why_not_local()}")

    def file_cache(self, model: str, action: str | None = None) -> float:
        """The share of the model's file in the server host's page cache (0–1) after ``action``: ``evict`` drops it
        (a cold disk), ``warm`` reads it in; None only looks. Unknown where the file is not visible."""
        from perfkit.servers import pagecache

        path = self.model_file(model)
        if action == "evict":
            pagecache.evict(path)
        elif action == "warm":
            pagecache.warm(path)
        elif action is not None:
            raise ValueError(f"file_cache action {action!r}: evict, warm or None")
        return pagecache.resident_fraction(path)

    def read_bandwidth(self, model: str) -> dict[str, Any]:
        """How fast the server host's disk reads the model file from a cold page cache (the load floor):
        ``bytes_s``, ``seconds``, ``path``, ``size_bytes``. Unknown where the file is not visible."""
        from perfkit.servers import pagecache

        path = self.model_file(model)
        bw, secs = pagecache.read_bandwidth_bytes_s(path)
        return {"path": str(path), "bytes_s": bw, "seconds": secs, "size_bytes": path.stat().st_size}

    def log_source(self):
        """A ``perfkit.serverlog.LogSource`` for the server's own log, or None."""
        return None

    def device(self, model: str, backend=None) -> Device:
        return Device("unknown", unknown_because=self.why_not_local())

    def wait_memory_released(self, model: str, timeout_s: float = 120.0) -> float | None:
        """After an unload: wait until the model's memory is really free; seconds waited, None if unknowable."""
        return None

    def slots(self, model: str) -> dict[str, Any]:
        """Parallel request slots of the server for ``model`` (``total_slots``) and its context per slot
        (``n_ctx_per_slot``); Unknown where the server does not say."""
        raise Unknown(f"the {self.name} controller can't read the server's slots")

    def why_not_local(self) -> str:
        return "the server is not on this host"

    def describe(self) -> dict[str, Any]:
        return {"control": self.name, "local": self.is_local}

    def close(self) -> None:
        pass


class RemoteControl(ServerControl):
    """A server perfkit can only reach over HTTP: everything beyond the API is unknown, with the reason."""

    name = "remote"

    def __init__(self, url: str, reason: str | None = None):
        self.url = url
        self.reason = reason or f"the server at {url} is on another host (only its HTTP API is visible)"

    def why_not_local(self) -> str:
        return self.reason

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": self.url, "unknown_because": self.reason}
