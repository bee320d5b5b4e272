"""The evaluation artefacts as columns to compare: one per model on one split, and the matrix of paired
differences between models.

An outside model (a Kaggle-format predictions file) becomes one more column, scored by
``spinecad.evaluation.scoring`` against the true grades the stored predictions hold, with the same metrics and curves.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spinecad.evaluation import metrics
from spinecad.evaluation import store as evaluation
from spinecad.evaluation.artefacts import (
    Calibration,
    Confusion,
    GradeCurves,
    Intervals,
    Metrics,
    Reliability,
    SignificanceDocument,
)
from spinecad.evaluation.scoring import LABEL_COLUMNS, ScoringError, match_predictions, score_predictions
from spinecad.labels import SEVERITIES, SEVERITY_COLUMNS


@dataclass(frozen=True)
class ColumnResults:
    """One model (or the ensemble, or an outside model) on one split: metrics, intervals, curves, confusion."""

    name: str
    metrics: Metrics
    intervals: Intervals | None
    curves: Mapping[str, GradeCurves]  # ROC/PR points per grade
    confusion: Confusion
    note: str = ""
    calibration: Calibration | None = None  # ECE raw and, when fitted, calibrated
    reliability: Reliability | None = None  # of the raw probabilities
    reliability_calibrated: Reliability | None = None  # ... and of the calibrated ones, when fitted


@dataclass(frozen=True)
class DifferenceMatrix:
    """Row model minus column model in one metric, with the 95% interval: square arrays, NaN on the diagonal."""

    metric: str
    names: list[str]
    difference: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @property
    def excludes_zero(self) -> np.ndarray:
        """True where the interval lies wholly on one side of zero."""
        with np.errstate(invalid="ignore"):
            return (self.low > 0) | (self.high < 0)


def shown_model_keys(root: str | Path, loaded_keys: Sequence[str]) -> list[str]:
    """The evaluation's model keys for the models the app has loaded, plus the ensemble, in summary order.

    When the evaluation names none of the loaded models (other keys), every model it lists is shown.
    """
    keys = [m.key for m in evaluation.load_summary(root).models]
    chosen = [k for k in keys if k in loaded_keys or k == evaluation.ENSEMBLE_KEY]
    return chosen if any(k != evaluation.ENSEMBLE_KEY for k in chosen) else keys


def load_columns(root: str | Path, split: str, model_keys: Sequence[str]) -> list[ColumnResults]:
    """Every listed model's stored metrics, intervals, curves and confusion matrices on ``split``."""
    names = evaluation.load_summary(root).display_names()
    columns = []
    for key in model_keys:
        document = evaluation.load_metrics(root, key, split)
        curves = evaluation.load_curves(root, key, split)
        columns.append(ColumnResults(names[key], document.metrics, document.intervals, curves.roc_pr,
                                     document.confusion, calibration=document.calibration,
                                     reliability=curves.reliability,
                                     reliability_calibrated=curves.reliability_calibrated))
    return columns


def load_difference_matrices(root: str | Path,
                             model_keys: Sequence[str]) -> tuple[list[DifferenceMatrix], SignificanceDocument]:
    """The significance artefact as one matrix per metric over the listed models (in that order), and the
    document itself (split, n_boot, seed, ...). ArtefactError when it is missing or invalid."""
    document = evaluation.load_significance(root)
    names = {m.key: m.display_name for m in document.models}
    keys = [k for k in model_keys if k in names]
    position = {key: i for i, key in enumerate(keys)}
    matrices = []
    for metric in document.metrics:
        shape = (len(keys), len(keys))
        difference, low, high = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
        for pair in document.pairs:
            if pair.metric != metric or pair.a not in position or pair.b not in position:
                continue
            i, j = position[pair.a], position[pair.b]
            values = [np.nan if v is None else v for v in (pair.difference, pair.low, pair.high)]
            difference[i, j], low[i, j], high[i, j] = values
            # b - a is the same resamples negated: its interval is the mirror image.
            difference[j, i], low[j, i], high[j, i] = -values[0], -values[2], -values[1]
        matrices.append(DifferenceMatrix(metric, [names[k] for k in keys], difference, low, high))
    return matrices, document


def load_histories(root: str | Path, model_keys: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Training histories by display name, for the models that have a history.csv."""
    names = evaluation.load_summary(root).display_names()
    return {names[key]: evaluation.load_history(root, key) for key in model_keys
            if evaluation.history_path(root, key).is_file()}


def split_labels(root: str | Path, split: str, model_key: str) -> pd.DataFrame:
    """The true grade of every row of a split (row_id, study_id, level, severity), from a predictions.csv."""
    return evaluation.load_predictions(root, model_key, split)[list(LABEL_COLUMNS)]


def read_outside_predictions(data: bytes) -> pd.DataFrame:
    """A Kaggle-format predictions CSV (``row_id,normal_mild,moderate,severe``) as text columns."""
    try:
        # As text, so scoring can name a bad cell by row instead of the whole read failing.
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        raise ScoringError("The predictions file is not a readable CSV; expected columns "
                           "row_id,normal_mild,moderate,severe as in a Kaggle submission.") from None


def score_outside(predictions: pd.DataFrame, labels: pd.DataFrame, *, name: str, n_boot: int = 1000,
                  seed: int = 0) -> ColumnResults:
    """Score outside predictions on the labelled rows they cover, exactly as the training package scores."""
    matched = match_predictions(predictions, labels)
    score = score_predictions(predictions, labels, n_boot=n_boot, seed=seed)
    y_true = matched.predictions["severity"].map(SEVERITIES.index).to_numpy()
    probs = matched.predictions[list(SEVERITY_COLUMNS)].to_numpy(dtype=float)
    covered = len(matched.predictions)
    note = f"Scored on {covered} of {len(labels)} labelled rows of this split"
    if score["n_invalid_rows"]:
        note += f"; {score['n_invalid_rows']} invalid row(s) left out"
    if score["n_other_condition_rows"]:
        note += f"; {score['n_other_condition_rows']} row(s) of other conditions skipped"
    curves = metrics.curve_points(y_true, probs)
    return ColumnResults(
        name, Metrics.model_validate({field: score[field] for field in Metrics.model_fields}),
        Intervals.model_validate(score["intervals"]) if score["intervals"] else None,
        {grade: GradeCurves.model_validate(values) for grade, values in curves.items()},
        Confusion.model_validate(metrics.confusion_matrices(y_true, np.argmax(probs, axis=1))), note + ".",
        calibration=Calibration(ece=metrics.expected_calibration_error(y_true, probs), n_bins=15),
        reliability=Reliability.model_validate(metrics.reliability_curve(y_true, probs)))
