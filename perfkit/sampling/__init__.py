"""What the hardware did: GPU (NVML) and system (psutil) samplers, and windows over their data."""

from perfkit.sampling.gpu import GpuSampler
from perfkit.sampling.monitor import Monitor, Window
from perfkit.sampling.system import SystemSampler

__all__ = ["GpuSampler", "SystemSampler", "Monitor", "Window"]
