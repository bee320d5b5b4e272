"""One analysed slice: every model's probabilities for all five levels plus the non-identifying facts of the input.

This is what the app keeps per visitor between a prediction and a level switch, and what its ``predict`` API
returns as JSON (:meth:`SliceAnalysis.to_dict`). Switching the level only reads it: no model runs again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from spinecad.imaging import SliceFacts
from spinecad.labels import SEVERITIES, level_index
from spinecad.predict import ENSEMBLE, Prediction


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
        return list(self.facts.warnings)

    def to_dict(self, level: str) -> dict:
        """The JSON of the app's ``predict`` API for one level."""
        return {**self.prediction.to_dict(level), "warnings": self.warnings, "source": self.source,
                "demo": self.demo}

    def probability_table(self, level: str) -> pd.DataFrame:
        """One row per model and one for the ensemble: the three probabilities (%), grade, time taken, device."""
        result = self.prediction.to_dict(level)
        rows = []
        for name, values in [*result["models"].items(), (ENSEMBLE, result["ensemble"])]:
            rows.append({
                "Model": name,
                **{grade: f"{100 * values[grade]:.1f}%" for grade in SEVERITIES},
                "Grade": values["grade"],
                "Time (ms)": f"{values['latency_ms']:.1f}" if "latency_ms" in values else "",
                "Device": result["device"] if name != ENSEMBLE else "",
            })
        return pd.DataFrame(rows)

    def grade_grid(self) -> pd.DataFrame:
        """Predicted grade of every model (rows) at every level (columns), the ensemble last."""
        grid = pd.DataFrame(self.prediction.to_dict(0)["all_levels"]).T
        grid.index.name = "Model"
        return grid.reset_index()

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
