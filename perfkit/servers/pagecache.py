"""How much of a file sits in the OS page cache, and evicting it (the cold-disk state)."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]


def resident_fraction(path: str | Path) -> float:
    """Fraction (0..1) of the file's pages in the page cache, by ``mincore(2)``; reads nothing."""
    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    with open(path, "rb") as f:
        # A private (copy) mapping is writable from Python's side, which ctypes needs for the
        # buffer address; no page is touched, so nothing is read into the cache.
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        try:
            page = mmap.PAGESIZE
            n = (size + page - 1) // page
            vec = (ctypes.c_ubyte * n)()
            buf = ctypes.c_char.from_buffer(mm)
            try:
                if _libc.mincore(ctypes.addressof(buf), size, vec) != 0:
                    raise OSError(ctypes.get_errno(), "mincore failed")
            finally:
                del buf
            return sum(v & 1 for v in vec) / n
        finally:
            mm.close()


def evict(path: str | Path) -> float:
    """Drop the file's clean pages from the page cache; return the resident fraction afterwards.

    Pages still mapped by a running process stay: unload the model first.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        # Dirty pages (a model just pulled or copied) can't be dropped: write them back first.
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return resident_fraction(path)


def read_bandwidth_bytes_s(path: str | Path, block_bytes: int = 8 << 20) -> tuple[float, float]:
    """Cold sequential read of the file itself (evicted first): returns (bytes/s, seconds).

    This is the disk's bandwidth for this very file, the load-time limit a report compares with.
    """
    import time

    evict(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        while os.read(fd, block_bytes):
            pass
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    return os.path.getsize(path) / dt, dt


def warm(path: str | Path) -> None:
    """Read the whole file, so it is in the page cache (a cold_memory state: unloaded, file cached)."""
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass
