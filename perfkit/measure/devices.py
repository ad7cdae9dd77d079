"""Where a model runs and what it occupies, recorded once per model as a ``device`` event: the device (host
CPU, GPU, or a partial offload across both) with its memory bandwidth (the decode limit), asked of the
server's controller, and the resident model's own memory read while it is loaded and used."""

from __future__ import annotations

from typing import Iterable

from perfkit.client.backends import Sampling
from perfkit.core.errors import PerfkitError
from perfkit.core.events import DeviceFound, events_of
from perfkit.core.store import RunStore
from perfkit.measure.cache_states import ensure_warm
from perfkit.servers.control.device import telemetry_device


def record_device(session, store: RunStore, model: str) -> None:
    """One ``device`` event for ``model`` (the embedded engine: the host CPU; a local Ollama: /api/ps and
    NVML; a remote server: "unknown, because")."""
    keep_alive = session.runner.keep_alive
    try:
        ensure_warm(session.backend, model, keep_alive, timeout_s=session.runner.timeout_s)
        device = session.control.device(model, session.backend)  # the first call measures host bandwidth: seconds
        # A short keep-alive may have put the model to sleep meanwhile: use it again, then read its memory.
        ensure_warm(session.backend, model, keep_alive, timeout_s=session.runner.timeout_s)
        session.backend.generate(model, "ok", Sampling(num_predict=2), keep_alive=keep_alive,
                                 timeout_s=session.runner.timeout_s)
        resident = session.backend.resident_memory(model)
        seen = session.monitor.telemetry_gpus() if device.kind == "unknown" else None
        if seen is not None:  # another host, whose exporter names its GPUs
            device = telemetry_device(resident.get("model_memory_bytes"), resident.get("model_vram_bytes"), seen[1],
                                      seen[0], "the server's /api/ps (size_vram of size)")
        store.emit(DeviceFound(model=model, **device.as_record(), **resident))
    except PerfkitError as e:  # the model can't be served: its trials already say how it fails
        store.emit(DeviceFound(model=model, device="unknown", unknown_because=f"the server could not serve it: {e}"))


def record_devices(session, store: RunStore, models: Iterable[str]) -> None:
    """A ``device`` event for each model that has none yet (a resumed run records the rest)."""
    done = set(events_of(store.events(), DeviceFound)["model"])
    for m in models:
        if m not in done:
            record_device(session, store, m)
