"""A slice's [0, 1] pixels -> the normalised 3-channel tensor one backbone expects (paper: resize, ImageNet norm)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf


@dataclass(frozen=True)
class DataConfig:
    """How one backbone wants its input: square side in pixels, per-channel mean/std, resize interpolation."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def as_dict(self) -> dict:
        return {
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, values: dict) -> DataConfig:
        return cls(
            input_size=int(values["input_size"]),
            mean=tuple(float(v) for v in values["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in values["std"]),  # type: ignore[arg-type]
            interpolation=str(values.get("interpolation", "bicubic")),
        )


def resize_unit(pixels: torch.Tensor, size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """Resize (..., H, W) [0, 1] images to size x size (the paper's plain resize) and clamp back to [0, 1]."""
    resized = tvf.resize(pixels, [size, size], interpolation=InterpolationMode(interpolation), antialias=True)
    return resized.clamp_(0.0, 1.0)


def normalise(grey: torch.Tensor, config: DataConfig) -> torch.Tensor:
    """Turn (B, 1, H, W) greyscale [0, 1] into (B, 3, H, W) normalised with the backbone's mean/std."""
    rgb = grey.expand(-1, 3, -1, -1)
    return tvf.normalize(rgb, mean=list(config.mean), std=list(config.std))


def slice_to_tensor(pixels: np.ndarray, config: DataConfig) -> torch.Tensor:
    """One (H, W) float [0, 1] slice -> a (1, 3, S, S) model input for ``config``."""
    grey = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    return normalise(resize_unit(grey, config.input_size, config.interpolation), config)
