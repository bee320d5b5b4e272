"""Placing the five disc levels by themselves: the localiser on one sagittal slice of a series.

    localizer, problem = load_localizer(manifest)        # None and the reason when none is listed or it fails
    index = localizer.choose_slice(stack)                 # which slice of the series (ordered by position)
    points = localizer.predict(stack[index])              # five LevelPoints, in LEVELS order
    placed = [p for p in points if p.confidence >= localizer.min_confidence]   # the rest: leave unplaced

The slice rule is the middle of the stack (``choose_slice``): on the phantom the labelled slice is the middle one;
on the real RSNA 2024 labels 92% of levels lie on the one instance most of their study's levels use, but where
that instance sits in its series needs the images, so the rule is not measured on real data (README).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from spinecad.inference.manifest import Manifest, ManifestEntry
from spinecad.labels import LEVELS
from spinecad.models.localizer import LocalizerModel
from spinecad.models.model import CheckpointError
from spinecad.models.preprocess import slice_to_tensor

logger = logging.getLogger(__name__)

NO_SAGITTAL = "The study has no sagittal series, so the levels cannot be placed by themselves: click them."
ONE_SLICE = ("The sagittal series has a single slice, so which slice crosses the midline cannot be told: "
             "click the levels.")
NOT_LISTED = "The model manifest lists no localiser: click the levels."


class LocalizerInputError(ValueError):
    """A series or slice the localiser cannot work on; the message says why, in words for the user."""


@dataclass(frozen=True)
class LevelPoint:
    """Where the localiser puts one disc level's canal point on the slice it was given."""

    level: str  # "L1/L2".."L5/S1"
    x: float  # column, pixels of the given slice
    y: float  # row, pixels of the given slice
    confidence: float  # in [0, 1]: the share of the level's heatmap within two cells of its peak

    def to_dict(self) -> dict:
        return {"level": self.level, "x": self.x, "y": self.y, "confidence": self.confidence}


class Localizer:
    """A loaded localiser: five points per sagittal slice and the rule that picks the slice."""

    def __init__(self, model: LocalizerModel, *, name: str = "localiser", source: str = "") -> None:
        self.model = model.eval()
        self.name = name
        self.source = source  # e.g. "local: checkpoints/localizer-cpu"

    @property
    def min_confidence(self) -> float:
        """Below it a level is left unplaced (chosen on the validation split by training)."""
        return float(self.model.config.min_confidence)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def choose_slice(self, stack: Sequence[np.ndarray]) -> int:
        """Index of the slice to run on, in a series ordered by position: the middle one (the upper middle of an
        even count). LocalizerInputError for an empty series or a single slice."""
        if len(stack) == 0:
            raise LocalizerInputError(NO_SAGITTAL)
        if len(stack) == 1:
            raise LocalizerInputError(ONE_SLICE)
        return len(stack) // 2

    def predict(self, pixels: np.ndarray) -> list[LevelPoint]:
        """The five levels' points on one (rows, cols) float [0, 1] slice, in LEVELS order."""
        return self.predict_many([pixels])[0]

    @torch.inference_mode()
    def predict_many(self, slices: Sequence[np.ndarray]) -> list[list[LevelPoint]]:
        """``predict`` for several slices in one batch (any sizes; each is resized to the model's input)."""
        for pixels in slices:
            if np.ndim(pixels) != 2 or min(np.shape(pixels)) < 2 or not np.isfinite(pixels).all():
                raise LocalizerInputError("The localiser needs one greyscale slice with finite pixel values.")
        config = self.model.data_config
        batch = torch.cat([slice_to_tensor(np.asarray(pixels, dtype=np.float32), config) for pixels in slices])
        found, confidence = self.model.decode(self.model(batch.to(self.device)))
        results = []
        for pixels, points, sure in zip(slices, found.cpu().double(), confidence.cpu().double(), strict=True):
            rows, cols = np.shape(pixels)
            # Input pixel centres -> the slice's own: each axis scaled by its own size (the resize is not square).
            xs = (points[:, 0] + 0.5) * cols / config.input_size - 0.5
            ys = (points[:, 1] + 0.5) * rows / config.input_size - 0.5
            results.append([LevelPoint(level, float(x), float(y), float(c))
                            for level, x, y, c in zip(LEVELS, xs, ys, sure, strict=True)])
        return results


def load_localizer(manifest: Manifest | None, device: str | torch.device = "cpu") -> tuple[Localizer | None, str]:
    """The manifest's localiser, or None and why (none listed, or its checkpoint fails to load: the message names
    it and the reason). The second value is "" when it loaded."""
    if manifest is None or manifest.localizer is None:
        return None, NOT_LISTED
    entry = manifest.localizer
    try:
        model, source = _load_entry(manifest, entry)
    except CheckpointError as error:
        logger.warning("localiser %s not loaded: %s", entry.name, error)
        return None, f"The localiser ({entry.name}) could not be loaded, so the levels must be clicked: {error}"
    return Localizer(model.to(device), name=entry.name, source=source), ""


def _load_entry(manifest: Manifest, entry: ManifestEntry) -> tuple[LocalizerModel, str]:
    """Hub at the pinned revision first, the local folder when the Hub cannot serve it."""
    local = manifest.local_path(entry)
    if entry.repo_id:
        try:
            return LocalizerModel.load(entry.repo_id, revision=entry.revision), \
                f"hub: {entry.repo_id}@{(entry.revision or '')[:12]}"
        except CheckpointError:
            if local is None or not local.exists():
                raise
            logger.warning("localiser %s: Hub copy unavailable; using the local copy", entry.name)
    if local is None or not local.exists():
        raise CheckpointError(f"no checkpoint folder at {local}.")
    return LocalizerModel.load(local), f"local: {local}"
