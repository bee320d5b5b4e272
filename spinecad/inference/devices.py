"""Which device to run on, and the precision used there."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(preference: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else CPU."""
    if preference:
        return torch.device(preference)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, *, bf16: bool = True) -> contextlib.AbstractContextManager:
    """bf16 mixed precision on CUDA unless ``bf16=False`` (measured in bench/gpu.py); full fp32 on the CPU."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
