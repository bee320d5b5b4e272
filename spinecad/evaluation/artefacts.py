"""The evaluation-artefact format, declared once as pydantic models: what the training package writes and the app
reads. ``spinecad.evaluation.store`` is the one module that reads and writes the files.

Layout under an evaluation root (schema version ``SCHEMA_VERSION``)::

    summary.json                          Summary: the models in column order ("ensemble" last) and the splits
    <model_key>/history.csv               optional, one row per epoch: HISTORY_COLUMNS
    <model_key>/<split>/predictions.csv   one row per (study, level): PREDICTION_COLUMNS; severity is the true
                                          grade, normal_mild/moderate/severe the predicted probabilities
    <model_key>/<split>/metrics.json      MetricsDocument: Table-2 metrics, bootstrap intervals, confusion
                                          matrices, top-label ECE (raw, and calibrated when fitted)
    <model_key>/<split>/curves.json       CurvesDocument: ROC/PR points per grade, reliability curves
    significance.json                     optional, SignificanceDocument: paired patient-level bootstrap of every
                                          two models' difference in macro F1 and macro ROC-AUC on one split
    localizers/<key>/<split>/points.csv   optional, the disc-level localiser: one LocalizerPointRow per level
    localizers/<key>/<split>/metrics.json LocalizerDocument: point error in mm, same axial slice, mix-ups, per level
    localizers/<key>/<split>/<study>.png  a few of the split's sagittal slices the points are drawn on

Predictions, metrics and curves are of the raw (uncalibrated) probabilities; calibration is reported beside them.
Every number is finite (``null`` where a metric is undefined), counts are integers, unknown fields are refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, AllowInfNan, BaseModel, ConfigDict, Field, Strict

from spinecad.labels import LEVELS, SEVERITIES, SEVERITY_COLUMNS

SCHEMA_VERSION = 1
EVALUATED_SPLITS: tuple[str, ...] = ("val", "test")  # what python -m train evaluates
KNOWN_SPLITS: tuple[str, ...] = ("train", "val", "test")
ENSEMBLE_KEY = "ensemble"

Count = Annotated[int, Strict()]  # an integer, never 1.0 or true
Number = Annotated[float, Strict(), AllowInfNan(False)]  # finite; an int is a number too
Optional = Number | None  # None where a metric is undefined (e.g. ROC-AUC of an absent grade)
_KEY_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")  # a model key names a folder


def _one_per_grade(values: dict) -> dict:
    if list(values) != list(SEVERITIES):
        raise ValueError(f"expected one entry per grade ({', '.join(SEVERITIES)}) in that order, got {list(values)}")
    return values


def _square(matrix: list[list[float]]) -> list[list[float]]:
    if len(matrix) != len(SEVERITIES) or any(len(row) != len(SEVERITIES) for row in matrix):
        raise ValueError(f"expected a {len(SEVERITIES)} x {len(SEVERITIES)} matrix")
    return matrix


def checked_split(split: str) -> str:
    """``split`` if it is one of KNOWN_SPLITS; ValueError naming them otherwise."""
    if split not in KNOWN_SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {', '.join(KNOWN_SPLITS)}.")
    return split


def checked_key(model_key: str) -> str:
    """``model_key`` if it can name a folder safely; ValueError otherwise."""
    if not _KEY_PATTERN.fullmatch(model_key):
        raise ValueError(f"Model key {model_key!r} must be lower-case letters, digits, '_' or '-'.")
    return model_key


Split = Annotated[str, AfterValidator(checked_split)]
ModelKey = Annotated[str, AfterValidator(checked_key)]


class ArtefactError(Exception):
    """An evaluation artefact is missing, truncated or does not match its schema; the message names the file."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


class Artefact(BaseModel):
    """Every artefact model: immutable, strict about unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- predictions.csv and history.csv: one model per row ----------------------------------------------------

Probability = Annotated[float, Strict(), AllowInfNan(False), Field(ge=0.0)]


class PredictionRow(Artefact):
    """One (study, level) row of predictions.csv: the true grade and the predicted probabilities (summing to 1)."""

    row_id: str  # Kaggle's <study_id>_spinal_canal_stenosis_<l4_l5>
    study_id: Count
    level: Literal[LEVELS]
    severity: Literal[SEVERITIES]  # the true grade
    normal_mild: Probability
    moderate: Probability
    severe: Probability


class HistoryRow(Artefact):
    """One epoch of history.csv; a value that was not measured (e.g. no validation that epoch) is None."""

    epoch: Annotated[int, Strict(), Field(ge=0)]
    phase: str
    train_loss: Optional
    train_accuracy: Optional
    train_macro_f1: Optional
    val_loss: Optional
    val_accuracy: Optional
    val_macro_f1: Optional
    lr: Optional
    seconds: Optional


PREDICTION_COLUMNS: tuple[str, ...] = tuple(PredictionRow.model_fields)
HISTORY_COLUMNS: tuple[str, ...] = tuple(HistoryRow.model_fields)
assert PREDICTION_COLUMNS[4:] == SEVERITY_COLUMNS  # the probability columns are the Kaggle submission's


# ---- metrics.json -------------------------------------------------------------------------------------------

class ClassMetrics(Artefact):
    precision: Optional
    recall: Optional
    f1: Optional
    roc_auc: Optional
    pr_auc: Optional


class Metrics(Artefact):
    """``spinecad.evaluation.metrics.compute_metrics`` of one model on one split."""

    n: Count
    class_counts: Annotated[dict[str, Count], AfterValidator(_one_per_grade)]
    predicted_counts: Annotated[dict[str, Count], AfterValidator(_one_per_grade)]
    accuracy: Optional
    macro_f1: Optional
    weighted_f1: Optional
    macro_roc_auc: Optional
    macro_pr_auc: Optional
    macro_precision: Optional
    macro_recall: Optional
    per_class: Annotated[dict[str, ClassMetrics], AfterValidator(_one_per_grade)]
    notes: list[str]
    # The RSNA 2024 competition's canal metric (lower is better); absent from files written before it was added.
    rsna_canal_log_loss: Optional = None
    rsna_any_severe_log_loss: Optional = None
    rsna_canal_score: Optional = None

    def value(self, name: str, grade: str | None = None) -> float | None:
        """An overall metric, or with ``grade`` that grade's one-vs-rest metric."""
        return getattr(self, name) if grade is None else getattr(self.per_class[grade], name)


class Interval(Artefact):
    estimate: Optional
    low: Optional
    high: Optional
    n_valid: Count


class ClassIntervals(Artefact):
    precision: Interval
    recall: Interval
    f1: Interval
    roc_auc: Interval
    pr_auc: Interval


class OverallIntervals(Artefact):
    accuracy: Interval
    macro_f1: Interval
    weighted_f1: Interval
    macro_roc_auc: Interval
    macro_pr_auc: Interval
    macro_precision: Interval
    macro_recall: Interval
    rsna_canal_log_loss: Interval | None = None  # absent from files written before the RSNA metric was added
    rsna_any_severe_log_loss: Interval | None = None
    rsna_canal_score: Interval | None = None


class Intervals(Artefact):
    """Patient-level percentile bootstrap intervals of every metric."""

    method: str
    n_boot: Count
    seed: Count
    alpha: Number
    n_studies: Count
    overall: OverallIntervals
    per_class: Annotated[dict[str, ClassIntervals], AfterValidator(_one_per_grade)]

    def interval(self, name: str, grade: str | None = None) -> Interval:
        """The interval of an overall metric, or with ``grade`` of that grade's metric (None if not stored)."""
        return getattr(self.overall, name) if grade is None else getattr(self.per_class[grade], name)


Matrix = Annotated[list[list[Number]], AfterValidator(_square)]


class Confusion(Artefact):
    labels: list[str]
    counts: Matrix
    row_normalised: Matrix


class CalibratedECE(Artefact):
    method: str
    temperature: Optional  # None: an ensemble's mean of calibrated models with no temperature of its own
    ece: Number
    log_loss: Optional = None  # absent from files written before log losses were recorded
    # For an ensemble with a temperature of its own: the mean of calibrated models it rescales, before it.
    base_ece: Optional = None
    base_log_loss: Optional = None


class Calibration(Artefact):
    ece: Number
    n_bins: Count
    log_loss: Optional = None  # absent from files written before log losses were recorded
    calibrated: CalibratedECE | None = None  # absent where no temperature was fitted


class MetricsDocument(Artefact):
    schema_version: Count
    model_key: str
    split: Split
    metrics: Metrics
    intervals: Intervals
    confusion: Confusion
    calibration: Calibration


# ---- curves.json --------------------------------------------------------------------------------------------

class RocPoints(Artefact):
    fpr: list[Number]
    tpr: list[Number]
    thresholds: list[Optional]  # scikit-learn's first threshold is +inf: stored as None


class PrPoints(Artefact):
    recall: list[Number]
    precision: list[Number]


class GradeCurves(Artefact):
    prevalence: Number
    roc: RocPoints | None  # None where the grade is absent or is every row
    pr: PrPoints | None


class Reliability(Artefact):
    kind: str
    n_bins: Count
    bin_edges: list[Number]
    mean_predicted: list[Number]
    observed: list[Number]
    count: list[Count]


class CurvesDocument(Artefact):
    schema_version: Count
    model_key: str
    split: Split
    roc_pr: Annotated[dict[str, GradeCurves], AfterValidator(_one_per_grade)]
    reliability: Reliability
    reliability_calibrated: Reliability | None = None


# ---- significance.json and summary.json ---------------------------------------------------------------------

class EvaluatedModel(Artefact):
    """One column of the evaluation: a folder key and the name shown to people."""

    key: ModelKey
    display_name: str


class PairDifference(Artefact):
    """Metric of model ``a`` minus model ``b`` over the same patient-level resamples."""

    a: str
    b: str
    metric: str
    difference: Optional
    mean_difference: Optional
    low: Optional
    high: Optional
    n_valid: Count
    p_value: Optional


class SignificanceDocument(Artefact):
    schema_version: Count
    split: Split
    method: str
    n_boot: Count
    seed: Count
    alpha: Number
    n_studies: Count
    metrics: list[str]
    models: list[EvaluatedModel]
    pairs: list[PairDifference]


class Summary(Artefact):
    schema_version: Count
    created_at: str  # ISO 8601, UTC
    demo: Annotated[bool, Strict()]  # true: synthetic phantom data
    description: str
    splits: tuple[Split, ...]
    models: tuple[EvaluatedModel, ...]

    def display_names(self) -> dict[str, str]:
        """Model key -> display name, in column order."""
        return {model.key: model.display_name for model in self.models}


# ---- localizers/<key>/<split>/: the disc-level localiser -----------------------------------------------------

class LocalizerPointRow(Artefact):
    """One labelled level of one study: the labelled and the predicted point (pixels of the labelled slice)."""

    study_id: Count
    level: Literal[LEVELS]
    x_true: Number
    y_true: Number
    x_pred: Number
    y_pred: Number
    confidence: Annotated[float, Strict(), AllowInfNan(False), Field(ge=0.0, le=1.0)]
    error_mm: Annotated[float, Strict(), AllowInfNan(False), Field(ge=0.0)]
    same_axial: bool | None  # both points map to the same axial slice; None where the study has no axial series
    neighbour_mixup: bool  # the point lies nearer a neighbouring level's labelled point than its own


LOCALIZER_POINT_COLUMNS: tuple[str, ...] = tuple(LocalizerPointRow.model_fields)


class PointErrors(Artefact):
    """Point errors of a set of levels (all, or one level): mm with PixelSpacing applied."""

    n: Count
    mean_mm: Optional
    median_mm: Optional
    p90_mm: Optional
    n_axial: Count  # levels of studies with an axial series
    same_axial: Optional  # share of those whose point maps to the labelled point's axial slice
    neighbour_mixups: Count
    below_min_confidence: Count  # the study mode leaves these unplaced


class SliceRule(Artefact):
    """How often the slice rule lands on the labelled sagittal instance, or next to it."""

    rule: str
    n_studies: Count
    exact: Optional
    within_one: Optional


class LocalizerDocument(Artefact):
    schema_version: Count
    model_key: str
    split: Split
    min_confidence: Number
    overall: PointErrors
    per_level: dict[str, PointErrors]
    slice_rule: SliceRule | None = None  # None where the series' positions could not be read
    examples: list[int] = []  # study ids whose slice is stored as <study>.png beside the points
