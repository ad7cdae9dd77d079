"""Peak memory bandwidth of common NVIDIA GPUs from their datasheets, by the name NVML (and so DCGM's
``modelName``) gives them: used only where NVML itself can't be asked (a GPU on another host, seen through its
exporter), and always labelled as a datasheet figure."""

from __future__ import annotations

import re

# (pattern on the NVML name, bytes/s, the datasheet's figure). More specific patterns first.
_TABLE: tuple[tuple[str, float, str], ...] = (
    (r"\bH200\b", 4.8e12, "H200: 4.8 TB/s"),
    (r"\bH100\b.*\bNVL\b", 3.9e12, "H100 NVL: 3.9 TB/s"),
    (r"\bH100\b.*\bPCIe\b", 2.0e12, "H100 PCIe: 2.0 TB/s"),
    (r"\bH100\b.*\bHBM3\b|\bH100\b.*\bSXM", 3.35e12, "H100 SXM: 3.35 TB/s"),
    (r"\bGH200\b", 4.0e12, "GH200 (HBM3): 4.0 TB/s"),
    (r"\bA100\b.*80GB", 2.039e12, "A100 80GB SXM: 2.039 TB/s (PCIe: 1.935)"),
    (r"\bA100\b", 1.555e12, "A100 40GB: 1.555 TB/s"),
    (r"\bL40S\b", 864e9, "L40S: 864 GB/s"),
    (r"\bL40\b", 864e9, "L40: 864 GB/s"),
    (r"\bA10G\b", 600e9, "A10G: 600 GB/s"),
    (r"\bA10\b", 600e9, "A10: 600 GB/s"),
    (r"\bL4\b", 300e9, "L4: 300 GB/s"),
    (r"\bRTX 6000 Ada\b", 960e9, "RTX 6000 Ada: 960 GB/s"),
    (r"\bRTX 5090\b", 1792e9, "GeForce RTX 5090: 1792 GB/s"),
    (r"\bRTX 4090\b", 1008e9, "GeForce RTX 4090: 1008 GB/s"),
    (r"\bRTX 3090 Ti\b", 1008e9, "GeForce RTX 3090 Ti: 1008 GB/s"),
    (r"\bRTX 3090\b", 936e9, "GeForce RTX 3090: 936 GB/s"),
    (r"\bV100\b", 900e9, "V100: 900 GB/s"),
    (r"\bT4\b", 320e9, "T4: 320 GB/s"),
)


def datasheet_bandwidth(name: str) -> tuple[float | None, str]:
    """(bytes/s, 'datasheet: …') for a GPU name, or (None, why not)."""
    for pattern, bw, figure in _TABLE:
        if re.search(pattern, name or ""):
            return bw, f"datasheet: {figure} (the GPU is on another host: its bus is not readable)"
    return None, f"no datasheet bandwidth known for {name!r}"
