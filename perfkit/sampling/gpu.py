"""GPU sampling through NVML (``nvidia-ml-py``, imported as ``pynvml``).

Per GPU and tick: utilization (%), memory used/total (bytes), power (W, average and
instantaneous), the energy counter (J, Volta and newer), SM clock (MHz), temperature (°C), and the
GPU memory held by the server's processes (bytes). No driver, no GPU, a metric the GPU does not
support, or an NVML error mid-run: recorded in ``unavailable`` and sampling goes on.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from perfkit.sampling._periodic import PeriodicSampler

_FI_DEV_POWER_INSTANT = 186  # NVML_FI_DEV_POWER_INSTANT (nvml.h); absent from older bindings


class GpuSampler(PeriodicSampler):
    """Args:
        interval_s: seconds between samples (default 0.1).
        pids: callable returning the server's process ids (for per-process GPU memory).
    """

    source = "gpu"

    def __init__(self, interval_s: float = 0.1, pids: Callable[[], Iterable[int]] | None = None):
        super().__init__(interval_s)
        self.pids = pids
        self.handles: list[Any] = []
        self.devices: list[dict[str, Any]] = []
        self._nvml = None
        self._skip: set[str] = set()
        self.server_gpus: set[int] = set()  # GPUs on which the server's processes have held memory

    def _setup(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as e:  # noqa: BLE001 - ImportError, NVMLError_LibraryNotFound, DriverNotLoaded ...
            self.unavailable["gpu"] = f"NVML unavailable: {type(e).__name__}: {e}"
            return
        self._nvml = pynvml
        try:
            n = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
            for i, h in enumerate(self.handles):
                name = pynvml.nvmlDeviceGetName(h)
                self.devices.append({"gpu": i, "name": name.decode() if isinstance(name, bytes) else name,
                                     "driver": _text(pynvml.nvmlSystemGetDriverVersion())})
        except Exception as e:  # noqa: BLE001
            self.unavailable["gpu"] = f"NVML error listing GPUs: {type(e).__name__}: {e}"
            self.handles = []
        if not self.handles and "gpu" not in self.unavailable:
            self.unavailable["gpu"] = "no GPU found by NVML"

    def _teardown(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self._nvml = None

    def _read(self, metric: str, fn: Callable[[], Any]) -> Any:
        if metric in self._skip:
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001
            nv = self._nvml
            if nv is not None and isinstance(e, nv.NVMLError) and e.value == nv.NVML_ERROR_NOT_SUPPORTED:
                self._skip.add(metric)  # never supported on this GPU: stop asking
            else:
                self.errors += 1
            self.unavailable.setdefault(metric, f"{type(e).__name__}: {e}")
            return None

    def _sample(self, t_ns: int) -> list[dict[str, Any]]:
        nv = self._nvml
        if nv is None:
            return []
        pids = set(self.pids()) if self.pids else set()
        rows = []
        for i, h in enumerate(self.handles):
            util = self._read("util", lambda: nv.nvmlDeviceGetUtilizationRates(h))
            mem = self._read("memory", lambda: nv.nvmlDeviceGetMemoryInfo(h))
            power_mw = self._read("power_avg", lambda: nv.nvmlDeviceGetPowerUsage(h))
            energy_mj = self._read("energy", lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h))
            inst = self._read("power_instant", lambda: _field_value(nv, h, _FI_DEV_POWER_INSTANT))
            row = {
                "source": "gpu", "t_ns": t_ns, "gpu": i,
                "gpu_util_pct": getattr(util, "gpu", None), "gpu_mem_util_pct": getattr(util, "memory", None),
                "gpu_mem_used_bytes": getattr(mem, "used", None), "gpu_mem_total_bytes": getattr(mem, "total", None),
                # nvmlDeviceGetPowerUsage: what nvidia-smi shows and what the energy counter integrates (H200
                # under load, measured: 685–692 W vs the counter's 686 W average). The instant field is a
                # point reading that swung 644–705 W in the same seconds: kept, apart, as a noisier view.
                "power_w": power_mw / 1000 if power_mw is not None else None,
                "power_avg_w": power_mw / 1000 if power_mw is not None else None,
                "power_gpu_instant_w": inst / 1000 if inst is not None else None,
                "energy_j": energy_mj / 1000 if energy_mj is not None else None,
                "sm_clock_mhz": self._read("sm_clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                "temperature_c": self._read("temperature",
                                            lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
            }
            if pids:
                procs = self._read("processes", lambda: nv.nvmlDeviceGetComputeRunningProcesses(h))
                if procs is not None:
                    row["server_gpu_mem_bytes"] = sum((p.usedGpuMemory or 0) for p in procs if p.pid in pids)
                    if any(p.pid in pids for p in procs):
                        self.server_gpus.add(i)
            rows.append(row)
        return rows


def _field_value(nv, handle, field_id: int) -> float | None:
    values = nv.nvmlDeviceGetFieldValues(handle, [field_id])
    v = values[0]
    if getattr(v, "nvmlReturn", 0) != 0:
        raise nv.NVMLError(v.nvmlReturn)
    return float(v.value.uiVal)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
