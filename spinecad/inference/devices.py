"""Which device to run on (the precision there is ``spinecad.inference.precision``'s choice)."""

from __future__ import annotations

import torch


def resolve_device(preference: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else CPU."""
    if preference:
        return torch.device(preference)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

