"""What the hardware did: GPU (NVML) and system (psutil) samplers, and windows over their data."""

from .gpu import GpuSampler
from .monitor import Monitor, Window
from .system import SystemSampler

__all__ = ["GpuSampler", "SystemSampler", "Monitor", "Window"]
