"""The localiser's measures: point error in mm (mean, median, 90th percentile) per level, the share of levels whose
point maps to the labelled point's axial slice, and neighbour mix-ups (a point nearer the next disc's labelled point
than its own), counted apart because a level put on the wrong disc grades the wrong disc.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spinecad.evaluation.artefacts import LOCALIZER_POINT_COLUMNS, PointErrors
from spinecad.labels import LEVELS


def point_rows(study_id: int, truth: np.ndarray, found: np.ndarray, confidence: np.ndarray,
               spacing: tuple[float, float], same_axial: list[bool | None]) -> list[dict]:
    """One row per labelled level of a study (truth NaN: unlabelled, skipped). ``truth``/``found`` are (5, 2) x, y
    pixels of one slice; ``spacing`` is PixelSpacing (between rows, between columns)."""
    step = np.array([spacing[1], spacing[0]])  # x moves by the column spacing, y by the row spacing
    labelled = np.flatnonzero(np.isfinite(truth).all(axis=1))
    rows = []
    for index in labelled:
        distances = np.linalg.norm((truth[labelled] - found[index]) * step, axis=1)
        nearest = int(labelled[int(np.argmin(distances))])
        rows.append({
            "study_id": int(study_id), "level": LEVELS[index],
            "x_true": float(truth[index, 0]), "y_true": float(truth[index, 1]),
            "x_pred": float(found[index, 0]), "y_pred": float(found[index, 1]),
            "confidence": float(np.clip(confidence[index], 0.0, 1.0)),
            "error_mm": float(np.linalg.norm((found[index] - truth[index]) * step)),
            "same_axial": same_axial[index], "neighbour_mixup": abs(nearest - int(index)) == 1,
        })
    return rows


def point_errors(points: pd.DataFrame, min_confidence: float) -> PointErrors:
    """The measures over a table of LOCALIZER_POINT_COLUMNS rows."""
    errors = points["error_mm"].to_numpy(dtype=float)
    axial = points["same_axial"].dropna().astype(bool)

    def stat(function) -> float | None:
        return float(function(errors)) if len(errors) else None

    return PointErrors(
        n=len(points), mean_mm=stat(np.mean), median_mm=stat(np.median), p90_mm=stat(lambda e: np.percentile(e, 90)),
        n_axial=len(axial), same_axial=float(axial.mean()) if len(axial) else None,
        neighbour_mixups=int(points["neighbour_mixup"].astype(bool).sum()),
        below_min_confidence=int((points["confidence"] < min_confidence).sum()),
    )


def errors_by_level(points: pd.DataFrame, min_confidence: float) -> tuple[PointErrors, dict[str, PointErrors]]:
    """Overall and per-level measures (levels in anatomical order; a level without rows is left out)."""
    points = points[list(LOCALIZER_POINT_COLUMNS)]
    per_level = {level: point_errors(points[points["level"] == level], min_confidence)
                 for level in LEVELS if (points["level"] == level).any()}
    return point_errors(points, min_confidence), per_level
