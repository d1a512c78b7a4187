"""Pick the compute device once; everything else receives it as an argument."""
from __future__ import annotations

import os

import torch

from .hardware import cpu_count


class DeviceError(RuntimeError):
    """The requested device cannot be used here."""


def cuda_available() -> bool:
    try:
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken driver counts as no GPU
        return False


def resolve_device(requested: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when a GPU is present, else cpu. "cuda" without a GPU raises."""
    requested = str(requested)
    if requested == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if requested.startswith("cuda"):
        if not cuda_available():
            raise DeviceError("CUDA was requested but no GPU is available here; use --device cpu or auto")
        return torch.device(requested)
    if requested == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"unknown device {requested!r}; use auto, cpu or cuda")


THREADS_ENV = "MNIST_LAB_TORCH_THREADS"


def configure_cpu() -> int:
    """Use every core this process may run on for intra-op work (torch's default can count
    cores outside the affinity mask, and oversubscribed small convs lose to thread hand-off).
    $MNIST_LAB_TORCH_THREADS caps it: the executor's workers share the cores, so each one sets
    its share there and jobs running side by side never oversubscribe them.
    Returns the thread count."""
    n = cpu_count()
    try:
        n = max(1, min(n, int(os.environ.get(THREADS_ENV) or n)))
    except ValueError:
        pass  # a malformed override is ignored, not fatal
    torch.set_num_threads(n)
    return n


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
