"""Training samples from the cache: (image, level id, grade id), with the paper's flips and rotations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from spinecad.labels import level_index, severity_index
from spinecad.preprocess import DataConfig, normalise, resize_unit
from train.cache import SliceCache
from train.recipe import Recipe


class CachedSlices(Dataset):
    """Rows of the sample index that have a decoded slice; augmentation only when ``augment``."""

    def __init__(self, rows: pd.DataFrame, cache: SliceCache, recipe: Recipe, *, augment: bool) -> None:
        self.rows = rows.reset_index(drop=True)
        self.cache = cache
        self.positions = self.rows["cache_position"].to_numpy()
        self.levels = torch.tensor([level_index(level) for level in self.rows["level"]], dtype=torch.long)
        self.labels = torch.tensor([severity_index(grade) for grade in self.rows["severity"]], dtype=torch.long)
        self.augment = (
            v2.Compose([
                v2.RandomHorizontalFlip(recipe.flip_probability),
                v2.RandomRotation(recipe.rotation_degrees, interpolation=v2.InterpolationMode.BILINEAR),
            ])
            if augment
            else None
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pixels = np.asarray(self.cache.images[self.positions[index]], dtype=np.float32) / 255.0
        image = torch.from_numpy(pixels)[None]
        if self.augment is not None:
            image = self.augment(image)
        return image, self.levels[index], self.labels[index]


def model_batch(images: torch.Tensor, config: DataConfig) -> torch.Tensor:
    """(B, 1, S, S) cached [0, 1] slices -> the normalised (B, 3, s, s) input one backbone expects."""
    if images.shape[-1] != config.input_size:
        images = resize_unit(images, config.input_size, config.interpolation)
    return normalise(images, config)
