"""The device that runs a model on this host, and the memory bandwidth that bounds its decode."""

from __future__ import annotations

import threading

from perfkit.core import host
from perfkit.servers.control.base import Device

_host_bw: tuple[float, str] | None = None
_lock = threading.Lock()


def host_bandwidth() -> tuple[float, str]:
    """Host memory bandwidth (bytes/s), measured once per process with every core copying."""
    global _host_bw
    with _lock:
        if _host_bw is None:
            import os

            n = os.cpu_count() or 1
            _host_bw = (host.memory_bandwidth_bytes_s(threads=n),
                        f"measured: multi-threaded copy on {n} threads, best of 5")
        return _host_bw


def cpu_device(evidence: str) -> Device:
    bw, src = host_bandwidth()
    return Device("cpu", host.info_cpu(), bw, src, cpu_share=1.0, offload_evidence=evidence)


def local_device(size_bytes: int | None, vram_bytes: int | None, pids: set[int], evidence: str) -> Device:
    """Device of a model served on this host, from what the server says is on its GPUs.

    ``vram_bytes`` 0 → CPU (host RAM bandwidth). All in VRAM → the GPU that holds the server's
    processes, its bandwidth from NVML. Partly in VRAM → a partial offload: the decode limit is the
    time to stream the GPU part at GPU bandwidth plus the CPU part at host bandwidth.
    """
    if not size_bytes:
        return Device("unknown", unknown_because="the server did not say how big the resident model is")
    vram = vram_bytes or 0
    if vram <= 0:
        return cpu_device(evidence)
    gpus = host.gpus_holding(pids)
    if not gpus:
        why = ("no GPU visible to NVML on this host holds the server's processes"
               if host.gpus() else "NVML sees no GPU on this host (perfkit must run on the GPU server itself)")
        return Device("gpu" if vram >= size_bytes else "gpu+cpu", cpu_share=max(0.0, 1 - vram / size_bytes),
                      offload_evidence=evidence, unknown_because=why)
    bws = [host.gpu_memory_bandwidth_bytes_s(i) for i in gpus]
    if any(b is None for b, _ in bws):
        return Device("gpu", gpu_indices=gpus, offload_evidence=evidence,
                      unknown_because="; ".join(src for b, src in bws if b is None))
    names = ", ".join(g["name"] for g in host.gpus() if g["index"] in gpus)
    # Layers split over several GPUs are read one after another within a token: bandwidths don't add,
    # but each GPU streams only its share, so the slowest-per-byte bound is the mean bandwidth.
    gpu_bw = sum(b for b, _ in bws) / len(bws)
    src = "; ".join(s for _, s in bws)
    if vram >= size_bytes:
        return Device("gpu", names, gpu_bw, src, gpus, 0.0, evidence)
    cpu_bw, cpu_src = host_bandwidth()
    cpu_bytes = size_bytes - vram
    effective = size_bytes / (vram / gpu_bw + cpu_bytes / cpu_bw)
    return Device("gpu+cpu", names, effective, f"{src} for {vram / size_bytes:.0%} of the model, {cpu_src} for the rest",
                  gpus, cpu_bytes / size_bytes, evidence)


def telemetry_device(size_bytes: int | None, vram_bytes: int | None, gpu_names: dict[int, str], source: str,
                     evidence: str) -> Device:
    """Device of a model on another host, from what the server says is in VRAM (Ollama's ``/api/ps``) and the GPUs
    its host's exporter names (``source``): the decode limit from the datasheet bandwidth of that GPU model.
    Which of several GPUs hold the model is not visible remotely, so they must all be one model; a partial
    offload's CPU part runs at a bandwidth no exporter gives: unknown."""
    from perfkit.servers.gpu_specs import datasheet_bandwidth

    if not size_bytes or vram_bytes is None:
        return Device("unknown", unknown_because="the server did not say how much of the model is in VRAM")
    if vram_bytes <= 0:
        return Device("cpu", offload_evidence=evidence,
                      unknown_because="the model runs on the server host's CPU, whose memory bandwidth is not measured")
    names = sorted(set(gpu_names.values()))
    share = max(0.0, 1 - vram_bytes / size_bytes)
    kind = "gpu" if vram_bytes >= size_bytes else "gpu+cpu"
    if len(names) != 1:
        why = (f"{source} names GPUs of different models ({', '.join(names)}); which ones hold the model is not "
               "visible from here" if names else f"{source} names no GPU")
        return Device(kind, cpu_share=share, offload_evidence=evidence, unknown_because=why)
    bw, src = datasheet_bandwidth(names[0])
    if bw is None or kind != "gpu":
        return Device(kind, names[0], None, None, sorted(gpu_names), share, evidence,
                      unknown_because=src if bw is None else "a partial offload: the CPU part's bandwidth on the "
                                                                 "server host is not measured")
    return Device("gpu", f"{names[0]} ({source})", bw, src, sorted(gpu_names), 0.0, evidence)
