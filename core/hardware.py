"""What this machine can compute on, asked without importing torch.

The serving path (Home, Draw, every page's sidebar) uses this, so a visitor who only
draws never pays for torch's ~400 MB. Training code still picks its torch.device in
core.device; both agree because both ask the same driver.
"""
from __future__ import annotations

import ctypes
import functools
import os


@functools.lru_cache(maxsize=1)
def _libcuda():
    try:
        lib = ctypes.CDLL("nvcuda.dll" if os.name == "nt" else "libcuda.so.1")
    except OSError:
        return None
    try:
        return lib if lib.cuInit(0) == 0 else None
    except AttributeError:
        return None


@functools.lru_cache(maxsize=1)
def gpu_names() -> tuple[str, ...]:
    """The NVIDIA GPUs the driver reports (empty without a driver or a device). Asked of
    libcuda directly, so it needs neither torch nor a CUDA toolkit."""
    lib = _libcuda()
    if lib is None:
        return ()
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return ()
    names = []
    for i in range(count.value):
        dev, buf = ctypes.c_int(0), ctypes.create_string_buffer(256)
        if lib.cuDeviceGet(ctypes.byref(dev), i) == 0 and lib.cuDeviceGetName(buf, 256, dev) == 0:
            names.append(buf.value.decode(errors="replace"))
        else:
            names.append(f"GPU {i}")
    return tuple(names)


def gpu_present() -> bool:
    return bool(gpu_names())


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def compute_summary() -> str:
    """One line for the sidebar: where training and inference run here."""
    gpus = gpu_names()
    if gpus:
        return f"GPU: {gpus[0]}" + (f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else "")
    return f"CPU, {cpu_count()} cores (no GPU found; everything runs on the CPU)"
