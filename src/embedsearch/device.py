"""Device names ("cpu", "cuda", "cuda:N", "auto") resolved to torch devices, with clear errors."""

from __future__ import annotations

import re

import torch

_DEVICE_PATTERN = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


def resolve_device(device: str | torch.device) -> torch.device:
    """Return the torch device for `device`; "auto" picks cuda:0 when a GPU is present, else cpu."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not _DEVICE_PATTERN.match(device):
        raise ValueError(f"device={device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'auto'")
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= available:
        raise ValueError(
            f"device={device!r}: this machine has {available} CUDA device(s); "
            "use 'cpu' or 'auto', or a cuda index below the device count"
        )
    return torch.device("cuda", index)


def synchronize(device: torch.device) -> None:
    """Wait for queued work on `device` to finish (a no-op on cpu), so a timer sees all of it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
