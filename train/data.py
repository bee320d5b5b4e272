"""Training samples from the cache: (image, level id, grade id); flips and rotations: train/augment.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from spinecad.labels import level_index, severity_index
from spinecad.models.preprocess import DataConfig, normalise, resize_unit
from train.cache import SliceCache


class SliceDataset(Dataset):
    """Rows of the sample index that have a decoded slice. Indexed by a list of rows, it returns that batch:
    [0, 1] float (B, 1, S, S) images read from the cache in one go, level ids (B,) and grade ids (B,)."""

    def __init__(self, rows: pd.DataFrame, cache: SliceCache) -> None:
        self.rows = rows.reset_index(drop=True)
        self.cache = cache
        self.positions = self.rows["cache_position"].to_numpy()
        self.levels = torch.tensor([level_index(level) for level in self.rows["level"]], dtype=torch.long)
        self.labels = torch.tensor([severity_index(grade) for grade in self.rows["severity"]], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        pixels = torch.from_numpy(np.asarray(self.cache.images[self.positions[rows.numpy()]]))
        return pixels.unsqueeze(1).float().div_(255.0), self.levels[rows], self.labels[rows]


def batches(
    dataset: SliceDataset, batch_size: int, *, shuffle_with: torch.Generator | None = None, drop_last: bool = False,
) -> DataLoader:
    """Batches of ``dataset`` in order, or in an order drawn from ``shuffle_with``; ``drop_last`` leaves out a last
    partial batch. Each batch is one bulk read of the cache: automatic batching is off and the sampler hands the
    dataset whole lists of indices, as the DataLoader documentation suggests for bulk reads, so there is no
    per-item fetch or collate. (Like any
    DataLoader without a generator of its own, each pass also takes one draw from the global torch RNG to seed
    workers; there are none, and that RNG is saved with the resume state.)"""
    order = SequentialSampler(dataset) if shuffle_with is None else RandomSampler(dataset, generator=shuffle_with)
    return DataLoader(dataset, sampler=BatchSampler(order, batch_size, drop_last=drop_last), batch_size=None)


def model_batch(images: torch.Tensor, config: DataConfig) -> torch.Tensor:
    """(B, 1, S, S) cached [0, 1] slices -> the normalised (B, 3, s, s) input one backbone expects."""
    if images.shape[-1] != config.input_size:
        images = resize_unit(images, config.input_size, config.interpolation)
    return normalise(images, config)
