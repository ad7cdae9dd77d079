"""The host a run measured on, and its physical limits, measured (never assumed) where possible."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import psutil



def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def info_cpu() -> str:
    """This host's CPU model name."""
    return _cpu_model()


@contextmanager
def _nvml() -> Iterator[Any]:
    """pynvml initialised for the block, or None without a library, driver or GPU (then nothing is known)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - ImportError, NVMLError_LibraryNotFound, DriverNotLoaded ...
        yield None
        return
    try:
        yield pynvml
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def gpus() -> list[dict[str, Any]]:
    with _nvml() as nv:
        if nv is None:
            return []
        try:
            out = []
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                name = nv.nvmlDeviceGetName(h)
                out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                            "memory_total_bytes": nv.nvmlDeviceGetMemoryInfo(h).total})
            return out
        except Exception:  # noqa: BLE001 - a GPU lost mid-listing: report none rather than fail a run
            return []


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                           cwd=cwd or Path(__file__).resolve().parents[2])
        if r.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=cwd or Path(__file__).resolve().parents[2]).stdout
        return r.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cache_dir() -> Path:
    """perfkit's cache root (``$PERFKIT_CACHE`` or ``~/.cache/perfkit``): wheels, models, engine state."""
    return Path(os.environ.get("PERFKIT_CACHE", Path.home() / ".cache" / "perfkit")).expanduser()


# Distributions that are a server's engine (a server kind registers its own): recorded in every manifest's
# versions and compared as the engine, not as a library.
ENGINE_DISTS: set[str] = set()


def register_engine_dist(dist: str) -> None:
    ENGINE_DISTS.add(dist)


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in ("perfkit", *sorted(ENGINE_DISTS), "httpx", "pandas", "numpy", "scipy", "seaborn", "papermill",
                 "nbconvert", "nvidia-ml-py", "psutil", "gguf", "pydantic"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def info() -> dict[str, Any]:
    """Host facts for a manifest: CPU, cores, memory, GPUs, OS, versions, git commit."""
    return {
        "hostname": platform.node(), "os": f"{platform.system()} {platform.release()}",
        "cpu": _cpu_model(), "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "memory_total_bytes": psutil.virtual_memory().total, "gpus": gpus(),
        "versions": versions(), "git_commit": git_commit(),
    }


def memory_bandwidth_bytes_s(size_bytes: int = 512 << 20, repeats: int = 5, threads: int | None = None) -> float:
    """Measured host memory bandwidth (bytes/s, read + write): the best of ``repeats`` copies of a
    ``size_bytes`` buffer split across ``threads`` threads (default: every core).

    One numpy thread can't saturate a multi-channel memory system, and the engine decodes with all
    its threads, so the limit it is compared against must be measured the same way. numpy's copy
    releases the GIL, so threads copy in parallel.
    """
    from concurrent.futures import ThreadPoolExecutor

    threads = threads or os.cpu_count() or 1
    src = np.ones(size_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    bounds = np.linspace(0, len(src), threads + 1).astype(int)
    parts = [(dst[a:b], src[a:b]) for a, b in zip(bounds, bounds[1:])]
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(lambda p: np.copyto(p[0], p[1]), parts))
            best = min(best, time.perf_counter() - t0)
    return 2 * size_bytes / best


def gpu_memory_bandwidth_bytes_s(index: int) -> tuple[float | None, str]:
    """A GPU's peak memory bandwidth from NVML itself: bus width (bits) / 8 × max memory clock × 2
    (double data rate). Returns (bytes/s, how it was obtained) or (None, why not).

    No name table: NVML's names vary by board and driver (an H100 SXM reads "NVIDIA H100 80GB HBM3"),
    and the bus and clock are what the bandwidth is made of.
    """
    with _nvml() as nv:
        if nv is None:
            return None, "NVML unavailable on this host"
        try:
            h = nv.nvmlDeviceGetHandleByIndex(index)
            bus_bits = nv.nvmlDeviceGetMemoryBusWidth(h)
            clock_mhz = nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM)
        except Exception as e:  # noqa: BLE001
            return None, f"NVML could not read the memory bus ({type(e).__name__}: {e})"
        if not bus_bits or not clock_mhz:
            return None, "NVML reports no memory bus width or clock for this GPU"
        return bus_bits / 8 * clock_mhz * 1e6 * 2, f"NVML: {bus_bits}-bit bus × {clock_mhz} MHz max memory clock × 2"


def gpus_holding(pids: set[int]) -> list[int]:
    """Indices of the GPUs on which any of ``pids`` holds memory (NVML compute + graphics processes)."""
    with _nvml() as nv:
        if nv is None:
            return []
        out = []
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                procs = list(nv.nvmlDeviceGetComputeRunningProcesses(h))
                try:
                    procs += list(nv.nvmlDeviceGetGraphicsRunningProcesses(h))
                except Exception:  # noqa: BLE001 - not supported on compute-only boards
                    pass
                if any(p.pid in pids for p in procs):
                    out.append(i)
        except Exception:  # noqa: BLE001
            return out
        return out


def matmul_flops_s(n: int = 1024, repeats: int = 3) -> float:
    """Measured float32 matrix-multiply rate (FLOP/s) of this host's BLAS: a practical compute peak."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
