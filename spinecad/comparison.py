"""What the app's Compare tab shows, read from the evaluation artefacts: one column per model on one split, and the
matrix of paired differences between models.

An outside model (a Kaggle-format predictions file) becomes one more column, scored by ``spinecad.scoring`` against
the true grades the evaluation's predictions files hold for that split, with the same metrics and curves.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spinecad import evaluation, metrics
from spinecad.labels import SEVERITIES, SEVERITY_COLUMNS
from spinecad.scoring import ScoringError, match_predictions, score_predictions

SPLIT_NAMES: dict[str, str] = {"val": "Validation", "test": "Test", "train": "Training"}
OUTSIDE_NAME = "Your model (uploaded)"
LABEL_COLUMNS: tuple[str, ...] = ("row_id", "study_id", "level", "severity")


@dataclass(frozen=True)
class ColumnResults:
    """One model (or the ensemble, or an outside model) on one split: metrics, intervals, curves, confusion."""

    name: str
    metrics: Mapping  # a compute_metrics dict
    intervals: Mapping | None  # a bootstrap_intervals dict
    curves: Mapping  # roc_pr per grade, as metrics.curve_points
    confusion: Mapping  # metrics.confusion_matrices
    note: str = ""
    calibration: Mapping | None = None  # metrics.json "calibration": ece, n_bins and, when fitted, "calibrated"
    reliability: Mapping | None = None  # metrics.reliability_curve of the raw probabilities
    reliability_calibrated: Mapping | None = None  # ... and of the calibrated ones, when fitted


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
    summary = evaluation.load_summary(root)
    keys = [m.key for m in summary.models]
    chosen = [k for k in keys if k in loaded_keys or k == evaluation.ENSEMBLE_KEY]
    return chosen if any(k != evaluation.ENSEMBLE_KEY for k in chosen) else keys


def load_columns(root: str | Path, split: str, model_keys: Sequence[str]) -> list[ColumnResults]:
    """Every listed model's stored metrics, intervals, curves and confusion matrices on ``split``."""
    names = {m.key: m.display_name for m in evaluation.load_summary(root).models}
    columns = []
    for key in model_keys:
        document = evaluation.load_metrics(root, key, split)
        curves = evaluation.load_curves(root, key, split)
        columns.append(ColumnResults(names[key], document["metrics"], document["intervals"], curves["roc_pr"],
                                     document["confusion"], calibration=document["calibration"],
                                     reliability=curves["reliability"],
                                     reliability_calibrated=curves.get("reliability_calibrated")))
    return columns


def load_difference_matrices(root: str | Path, model_keys: Sequence[str]) -> tuple[list[DifferenceMatrix], dict]:
    """The significance artefact as one matrix per metric over the listed models (in that order), and the
    document's facts (split, n_boot, seed, alpha, n_studies). ArtefactError when it is missing or invalid."""
    document = evaluation.load_significance(root)
    names = {m["key"]: m["display_name"] for m in document["models"]}
    keys = [k for k in model_keys if k in names]
    position = {key: i for i, key in enumerate(keys)}
    matrices = []
    for metric in document["metrics"]:
        shape = (len(keys), len(keys))
        difference, low, high = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
        for pair in document["pairs"]:
            if pair["metric"] != metric or pair["a"] not in position or pair["b"] not in position:
                continue
            i, j = position[pair["a"]], position[pair["b"]]
            values = [np.nan if pair[k] is None else pair[k] for k in ("difference", "low", "high")]
            difference[i, j], low[i, j], high[i, j] = values
            # b - a is the same resamples negated: its interval is the mirror image.
            difference[j, i], low[j, i], high[j, i] = -values[0], -values[2], -values[1]
        matrices.append(DifferenceMatrix(metric, [names[k] for k in keys], difference, low, high))
    facts = {k: document[k] for k in ("split", "n_boot", "seed", "alpha", "n_studies", "method")}
    return matrices, facts


def load_histories(root: str | Path, model_keys: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Training histories by display name, for the models that have a history.csv."""
    names = {m.key: m.display_name for m in evaluation.load_summary(root).models}
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


def score_outside(predictions: pd.DataFrame, labels: pd.DataFrame, *, name: str = OUTSIDE_NAME,
                  n_boot: int = 1000, seed: int = 0) -> ColumnResults:
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
    return ColumnResults(name, score, score["intervals"], metrics.curve_points(y_true, probs),
                         metrics.confusion_matrices(y_true, np.argmax(probs, axis=1)), note + ".",
                         calibration={"ece": metrics.expected_calibration_error(y_true, probs), "n_bins": 15},
                         reliability=metrics.reliability_curve(y_true, probs))


def metrics_table(columns: Sequence[ColumnResults], digits: int = 3) -> pd.DataFrame:
    """The paper's Table 2 for the columns, "estimate [95% interval]" per cell, ready to show."""
    table = evaluation.build_metrics_table({c.name: c.metrics for c in columns},
                                           {c.name: c.intervals for c in columns if c.intervals}, digits)
    table = pd.concat([table, _calibration_rows(columns, digits)])
    table = table.reset_index().rename(columns={"group": "Group", "metric": "Metric"})
    # The group name once per block reads like the paper's table.
    table.loc[table["Group"].duplicated(), "Group"] = ""
    return table


def _calibration_rows(columns: Sequence[ColumnResults], digits: int) -> pd.DataFrame:
    """ECE before and after temperature scaling, and the temperature, under the group "Calibration"."""
    rows = {"ECE, raw": [], "ECE, calibrated": [], "Temperature": []}
    for column in columns:
        calibration = column.calibration or {}
        calibrated = calibration.get("calibrated") or {}
        rows["ECE, raw"].append(_number(calibration.get("ece"), digits))
        rows["ECE, calibrated"].append(_number(calibrated.get("ece"), digits))
        temperature = calibrated.get("temperature")
        rows["Temperature"].append(_number(temperature, 2) if temperature is not None
                                   else ("per model" if calibrated else "n/a"))
    index = pd.MultiIndex.from_tuples([("Calibration", label) for label in rows], names=["group", "metric"])
    return pd.DataFrame(list(rows.values()), index=index, columns=[c.name for c in columns])


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
