"""Devices and dtypes: defaults, parsing, and a clock that waits for the device."""
from __future__ import annotations

from time import perf_counter

import torch

from engines.models import presets

# ----------------------------------------------------------------------------- devices

def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def synchronize(device: torch.device | None = None) -> None:
    """Wait for queued GPU work, so a clock read next measures it (CUDA kernels run asynchronously); on the
    CPU there is nothing to wait for. Every visible GPU is waited for: a model spread by device_map uses several."""
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


def clock(device: torch.device | None = None) -> float:
    """perf_counter() once `device` has finished its queued work: the reading that step timings subtract."""
    synchronize(device)
    return perf_counter()


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def parse_device(device: str | None) -> torch.device:
    """A device name -> torch.device, refusing in one sentence one that this machine does not have."""
    if not device:
        return default_device()
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise presets.ModelLoadError(f"Unknown device '{device}': use cpu, cuda or cuda:N.") from None
    backend = getattr(torch, dev.type, None)
    if dev.type != "cpu" and not (backend is not None and hasattr(backend, "is_available") and backend.is_available()):
        raise presets.ModelLoadError(f"This machine has no '{dev.type}' device; use cpu, or leave the device unset to "
                             f"take a GPU when there is one.")
    return dev


def parse_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if not dtype:
        return default_dtype(device)
    if dtype not in DTYPES:
        raise presets.ModelLoadError(f"Unknown dtype '{dtype}': use one of {', '.join(DTYPES)}.")
    return DTYPES[dtype]


