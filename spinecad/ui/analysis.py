"""What the app keeps per visitor and what its API returns: one analysed slice, and heatmaps as JSON.

A :class:`SliceAnalysis` is every model's probabilities for all five levels plus the non-identifying facts of the
input; switching the level only reads it, no model runs again. The JSON of ``/predict`` is
:meth:`SliceAnalysis.to_dict`, that of ``/explain`` :func:`explanation_to_dict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from spinecad.imaging import SliceFacts
from spinecad.inference.heatmaps import Heatmap
from spinecad.inference.predictor import Prediction
from spinecad.labels import SEVERITIES, level_index
from spinecad.ui.html import png_data_uri
from spinecad.ui.text import UNFAMILIAR_WARNING


@dataclass(frozen=True)
class SliceAnalysis:
    """A prediction for one slice and the facts about that slice that are safe to show."""

    prediction: Prediction
    facts: SliceFacts
    demo: bool = False  # the models are demo weights trained on synthetic phantoms
    # The windowed pixels, kept in memory for this visitor only (heatmaps, the raw/calibrated switch); never shown
    # in the JSON.
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def source(self) -> str:
        """The input in non-identifying terms, e.g. "DICOM 512x512, DICOM window"."""
        return describe_source(self.facts)

    @property
    def warnings(self) -> list[str]:
        """The reader's warnings about the file, then the models' own: an image unlike their training images."""
        return [*self.facts.warnings, *([UNFAMILIAR_WARNING] if self.prediction.unfamiliar else [])]

    def to_dict(self, level: str) -> dict:
        """The JSON of the app's ``predict`` API for one level."""
        return {**self.prediction.to_dict(level), "warnings": self.warnings, "source": self.source,
                "demo": self.demo}

    def ensemble_grade(self, level: str) -> tuple[str, float]:
        """The ensemble's grade at ``level`` and its probability."""
        probs = self.prediction.ensemble[level_index(level)]
        return SEVERITIES[int(np.argmax(probs))], float(np.max(probs))

    def agreeing_models(self, level: str) -> int:
        """How many models give the ensemble's grade at ``level``."""
        return round(self.prediction.agreement(level) * len(self.prediction.outputs))


def describe_source(facts: SliceFacts) -> str:
    """Format, size and window of a slice, nothing that could identify a patient (no header text, no names)."""
    parts = [f"{facts.source_format} {facts.columns}x{facts.rows}"]
    if facts.window_source:
        parts.append(facts.window_source)
    if facts.photometric == "MONOCHROME1":
        parts.append("MONOCHROME1 (inverted)")
    if facts.frames > 1:
        parts.append(f"frame {facts.frame_used + 1} of {facts.frames}")
    return ", ".join(parts)


def explanation_to_dict(heatmaps: Sequence[Heatmap]) -> dict:
    """The JSON of the app's ``explain`` API: per model the overlay as a PNG data URI and what it explains."""
    return {
        "level": heatmaps[0].level if heatmaps else None,
        "models": {
            h.name: {"image": None if h.overlay is None else png_data_uri(h.overlay), "grade": h.grade,
                     "probability": None if h.probability is None else round(h.probability, 6),
                     "seconds": round(h.seconds, 4), "method": h.method, "problem": h.problem}
            for h in heatmaps
        },
    }
