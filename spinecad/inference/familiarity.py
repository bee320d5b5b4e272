"""Has a model seen images like this one? Per-location Gaussians of its training images' feature maps (PaDiM).

Following Defard et al. (2021, "PaDiM: a patch distribution modeling framework for anomaly detection and
localization"): at the layer a heatmap reads (the registry's ``cam_layer``), each location of the feature map gets
the mean and the Ledoit-Wolf-shrunk covariance of the training images' features there (a fixed random subset of
``CHANNELS`` channels keeps it small). An image's distance is its largest Mahalanobis distance over the locations,
so a photograph, noise or a painted-over canal stands out even where pooled features would average it away. It is
"unfamiliar" past the threshold, a high quantile of the validation images' distances (default 99th). A backbone with
no heatmap layer is judged on its pooled features (one location). The statistics are a checkpoint file of their own
(``familiarity.safetensors``); the threshold is in config.json.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

FAMILIARITY_FILE = "familiarity.safetensors"
DEFAULT_QUANTILE = 0.99
CHANNELS = 32  # channels kept per location (PaDiM keeps a random subset: as good, far smaller)
METHOD = (f"PaDiM: per-location Gaussian of the heatmap layer's features ({CHANNELS} random channels, Ledoit-Wolf "
          "covariance); an image's distance is its largest location distance")


@dataclass(frozen=True)
class Familiarity:
    """Statistics of one model's training feature maps and the distance past which an image is unfamiliar."""

    channels: torch.Tensor  # (d,) indices of the kept channels
    means: torch.Tensor  # (locations, d)
    precision: torch.Tensor  # (locations, d, d) inverse of each location's shrunk covariance
    threshold: float  # distance at ``quantile`` of the validation images
    quantile: float

    def distances(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B,) largest Mahalanobis distance over the locations of (B, C, H, W) feature maps."""
        kept = _locations(feature_map, self.channels).double() - self.means.double()[:, None]  # (L, B, d)
        squared = torch.einsum("lbd,lde,lbe->lb", kept, self.precision.double(), kept)
        return squared.clamp_min(0).sqrt().max(dim=0).values

    def scores(self, feature_map: torch.Tensor) -> np.ndarray:
        """Distance in units of the threshold: at most 1 is familiar, above 1 unfamiliar."""
        return (self.distances(feature_map) / self.threshold).cpu().numpy()

    def config(self) -> dict:
        """What config.json records: the threshold and how it was set."""
        return {"threshold": self.threshold, "quantile": self.quantile, "method": METHOD}

    def save(self, folder: str | Path) -> None:
        """Write the statistics into a checkpoint folder (the threshold goes into config.json by the caller)."""
        tensors = {"channels": self.channels.long().contiguous(), "means": self.means.float().contiguous(),
                   "precision": self.precision.float().contiguous()}
        safetensors.torch.save_file(tensors, str(Path(folder) / FAMILIARITY_FILE))

    @classmethod
    def from_file(cls, path: str | Path, config: dict) -> Familiarity:
        """Read ``familiarity.safetensors`` with its config.json entry; ValueError if they do not fit together."""
        tensors = safetensors.torch.load_file(str(path))
        channels, means, precision = tensors["channels"], tensors["means"], tensors["precision"]
        locations, kept = means.shape
        if channels.shape != (kept,) or precision.shape != (locations, kept, kept):
            raise ValueError(f"{FAMILIARITY_FILE} holds channels {tuple(channels.shape)}, means {tuple(means.shape)} "
                             f"and precision {tuple(precision.shape)}, which do not fit together.")
        return cls(channels, means, precision, float(config["threshold"]), float(config["quantile"]))


def kept_channels(n_channels: int, count: int = CHANNELS, seed: int = 0) -> torch.Tensor:
    """The fixed random subset of a feature map's channels that the statistics keep (all when there are few)."""
    order = torch.randperm(n_channels, generator=torch.Generator().manual_seed(seed))
    return order[:min(count, n_channels)].sort().values


def fit_familiarity(train_maps: Iterable[torch.Tensor], val_maps: Iterable[torch.Tensor],
                    channels: torch.Tensor | None = None, quantile: float = DEFAULT_QUANTILE) -> Familiarity:
    """Per-location means and shrunk covariances of the training maps' kept channels; threshold from validation.

    The maps come in batches of (B, C, H, W) (only ``channels`` are read, so a large training set fits in memory);
    ``channels`` defaults to ``kept_channels`` of the maps' channel count.
    """
    from sklearn.covariance import LedoitWolf  # only training fits; the app never imports it

    batches = iter(train_maps)
    first = next(batches)
    channels = kept_channels(first.shape[1]) if channels is None else channels
    train = torch.cat([_locations(batch, channels) for batch in (first, *batches)], dim=1)
    train = train.double().numpy()  # (locations, images, kept channels)
    means = train.mean(axis=1)
    precision = np.stack([np.linalg.pinv(LedoitWolf().fit(location).covariance_, hermitian=True)
                          for location in train])
    fitted = Familiarity(channels, torch.from_numpy(means), torch.from_numpy(precision), 1.0, quantile)
    validation = torch.cat([fitted.distances(batch) for batch in val_maps]).numpy()
    return Familiarity(channels, fitted.means.float(), fitted.precision.float(),
                       float(np.quantile(validation, quantile)), quantile)


def majority_unfamiliar(unfamiliar: list[bool | None]) -> bool | None:
    """The ensemble's verdict: unfamiliar when most models that can judge say so; None when none can."""
    judged = [flag for flag in unfamiliar if flag is not None]
    return None if not judged else sum(judged) > len(judged) / 2


def _locations(feature_map: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (H * W, B, d): the kept channels, one row per location."""
    kept = feature_map.detach().float()[:, channels.to(feature_map.device)]
    return kept.flatten(2).permute(2, 0, 1).cpu()
