"""The paper's Table 2 metrics, their patient-level bootstrap intervals, ROC/PR curves and calibration.

Point metrics are scikit-learn's, called directly. Grades are class ids 0..2 in ``SEVERITIES`` order and the
predicted grade is the argmax of a row's probabilities. Per-class ROC-AUC and PR-AUC are one-vs-rest; a class
with no rows in ``y_true`` has no defined AUC, so it gets ``None`` and the macro average is taken over the
classes that have one (a note says so). Precision, recall and F1 follow scikit-learn's ``zero_division=0``
with all three grades as labels, as ``classification_report`` reports them.

scikit-learn is imported by the functions that call it: the app reads stored metrics and never computes them, so
its start does not pay for the import.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import pandas as pd

from spinecad.labels import SEVERITIES

CLASS_IDS: list[int] = list(range(len(SEVERITIES)))
# Overall rows of Table 2 first; macro precision/recall are quoted in the paper's text.
OVERALL_METRICS: tuple[str, ...] = (
    "accuracy", "macro_f1", "weighted_f1", "macro_roc_auc", "macro_pr_auc", "macro_precision", "macro_recall",
)
CLASS_METRICS: tuple[str, ...] = ("precision", "recall", "f1", "roc_auc", "pr_auc")
# The RSNA 2024 competition's metric for the canal (lower is better): see rsna_canal_metric.
RSNA_METRICS: tuple[str, ...] = ("rsna_canal_log_loss", "rsna_any_severe_log_loss", "rsna_canal_score")
RSNA_SAMPLE_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0)  # Normal/Mild, Moderate, Severe


class Metrics(TypedDict):
    """What ``compute_metrics`` returns: JSON-able, ``None`` where a metric is undefined."""

    n: int
    class_counts: dict[str, int]
    predicted_counts: dict[str, int]
    accuracy: float
    macro_f1: float
    weighted_f1: float
    macro_roc_auc: float | None
    macro_pr_auc: float | None
    macro_precision: float
    macro_recall: float
    per_class: dict[str, dict[str, float | None]]
    notes: list[str]
    rsna_canal_log_loss: float | None
    rsna_any_severe_log_loss: float | None
    rsna_canal_score: float | None


def _validated_inputs(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(y_true, probs)`` as int and float arrays; raise ValueError saying what is wrong."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=float)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"y_true must be a non-empty 1-D array of class ids; got shape {y.shape}.")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(SEVERITIES):
        raise ValueError(f"y_true must hold class ids 0..{len(SEVERITIES) - 1} ({', '.join(SEVERITIES)}).")
    if p.shape != (len(y), len(SEVERITIES)):
        raise ValueError(f"probs must have shape ({len(y)}, {len(SEVERITIES)}); got {p.shape}.")
    if not np.isfinite(p).all():
        raise ValueError("probs holds NaN or infinite values.")
    return y.astype(np.int64), p


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, study_ids: np.ndarray | None = None) -> Metrics:
    """Every metric of the paper's Table 2 for one model on one split (scikit-learn's definitions), and with
    ``study_ids`` the RSNA 2024 competition's canal metric (``rsna_canal_metric``; None without them)."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        precision_recall_fscore_support,
        precision_score,
        recall_score,
        roc_auc_score,
    )
    y, probs = _validated_inputs(y_true, probs)
    rsna = rsna_canal_metric(study_ids, y, probs) if study_ids is not None else dict.fromkeys(RSNA_METRICS)
    y_pred = probs.argmax(axis=1)
    n = len(y)
    notes: list[str] = []
    precision, recall, f1, support = precision_recall_fscore_support(
        y, y_pred, labels=CLASS_IDS, zero_division=0
    )
    predicted = np.bincount(y_pred, minlength=len(SEVERITIES))
    roc_auc: list[float | None] = []
    pr_auc: list[float | None] = []
    for k, grade in enumerate(SEVERITIES):
        is_grade = (y == k).astype(int)
        if support[k] == 0:
            notes.append(f"No {grade} case in y_true: its ROC-AUC and PR-AUC are undefined (null), its recall "
                         "and F1 are 0 by scikit-learn's zero_division=0, macro AUCs average the other grades.")
        elif support[k] == n:
            notes.append(f"Every case is {grade}: its ROC-AUC is undefined (null).")
        if predicted[k] == 0 and support[k] > 0:
            notes.append(f"{grade} was never predicted: its precision is 0 by scikit-learn's zero_division=0.")
        roc_auc.append(float(roc_auc_score(is_grade, probs[:, k])) if 0 < support[k] < n else None)
        pr_auc.append(float(average_precision_score(is_grade, probs[:, k])) if support[k] > 0 else None)
    return Metrics(
        n=n,
        class_counts={g: int(c) for g, c in zip(SEVERITIES, support, strict=True)},
        predicted_counts={g: int(c) for g, c in zip(SEVERITIES, predicted, strict=True)},
        accuracy=float(accuracy_score(y, y_pred)),
        macro_f1=float(f1_score(y, y_pred, labels=CLASS_IDS, average="macro", zero_division=0)),
        weighted_f1=float(f1_score(y, y_pred, labels=CLASS_IDS, average="weighted", zero_division=0)),
        # scikit-learn's average="macro" is the unweighted mean of the per-class scores.
        macro_roc_auc=_mean_of_defined(roc_auc),
        macro_pr_auc=_mean_of_defined(pr_auc),
        macro_precision=float(precision_score(y, y_pred, labels=CLASS_IDS, average="macro", zero_division=0)),
        macro_recall=float(recall_score(y, y_pred, labels=CLASS_IDS, average="macro", zero_division=0)),
        per_class={
            grade: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                    "roc_auc": roc_auc[k], "pr_auc": pr_auc[k]}
            for k, grade in enumerate(SEVERITIES)
        },
        notes=notes,
        **rsna,
    )


def rsna_canal_metric(study_ids: np.ndarray, y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The RSNA 2024 competition's score for spinal canal stenosis, as its metric defines it (lower is better).

    ``rsna_canal_log_loss``: multi-class log loss of every (study, level) row, each weighted 1, 2 or 4 by its true
    grade (Normal/Mild, Moderate, Severe). ``rsna_any_severe_log_loss``: per study, the binary log loss of "some
    level is Severe" against the study's highest Severe probability, weighted by the study's highest row weight.
    ``rsna_canal_score``: their mean (the competition averages these two terms with those of the other conditions).
    """
    from sklearn.metrics import log_loss
    y, probs = _validated_inputs(y_true, probs)
    probs = probs / probs.sum(axis=1, keepdims=True)  # as the competition's scoring does (sklearn warns otherwise)
    studies = np.asarray(study_ids)
    if studies.shape != y.shape:
        raise ValueError(f"study_ids must have one entry per row ({len(y)}); got shape {studies.shape}.")
    weights = np.asarray(RSNA_SAMPLE_WEIGHTS)[y]
    canal = log_loss(y, y_proba=probs, sample_weight=weights, labels=CLASS_IDS)
    per_study = (pd.DataFrame({"study": studies, "severe": (y == len(SEVERITIES) - 1).astype(int),
                               "weight": weights, "p_severe": probs[:, -1]})
                 .groupby("study", sort=True)[["severe", "weight", "p_severe"]].max())
    any_severe = log_loss(per_study["severe"].to_numpy(), y_proba=per_study["p_severe"].to_numpy(),
                          sample_weight=per_study["weight"].to_numpy(), labels=[0, 1])
    return {"rsna_canal_log_loss": float(canal), "rsna_any_severe_log_loss": float(any_severe),
            "rsna_canal_score": float((canal + any_severe) / 2)}


def _mean_of_defined(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def confusion_matrices(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Confusion matrix (rows = true grade, columns = predicted) as counts and row-normalised fractions."""
    from sklearn.metrics import confusion_matrix
    counts = confusion_matrix(y_true, y_pred, labels=CLASS_IDS)
    # A grade absent from y_true gets a row of zeros rather than NaN (scikit-learn's behaviour).
    fractions = confusion_matrix(y_true, y_pred, labels=CLASS_IDS, normalize="true")
    return {"labels": list(SEVERITIES), "counts": counts.tolist(), "row_normalised": fractions.tolist()}


def curve_points(y_true: np.ndarray, probs: np.ndarray, max_points: int = 200) -> dict[str, dict]:
    """One-vs-rest ROC (fpr, tpr, thresholds) and PR (recall, precision) points per grade, for charts.

    Curves are thinned to at most ``max_points`` evenly spaced points, keeping both ends. ROC's first threshold
    is +inf in scikit-learn and is stored as ``None``; an undefined curve is ``None``.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve
    y, probs = _validated_inputs(y_true, probs)
    curves: dict[str, dict] = {}
    for k, grade in enumerate(SEVERITIES):
        is_grade = (y == k).astype(int)
        positives = int(is_grade.sum())
        roc = pr = None
        if 0 < positives < len(y):
            fpr, tpr, thresholds = roc_curve(is_grade, probs[:, k])
            keep = _thinned(len(fpr), max_points)
            roc = {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(),
                   "thresholds": [float(t) if np.isfinite(t) else None for t in thresholds[keep]]}
        if positives > 0:
            precision, recall, _ = precision_recall_curve(is_grade, probs[:, k])
            keep = _thinned(len(recall), max_points)
            pr = {"recall": recall[keep].tolist(), "precision": precision[keep].tolist()}
        curves[grade] = {"prevalence": positives / len(y), "roc": roc, "pr": pr}
    return curves


def _thinned(length: int, max_points: int) -> np.ndarray:
    if length <= max_points:
        return np.arange(length)
    return np.unique(np.linspace(0, length - 1, max_points).round().astype(int))


def reliability_curve(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15, grade: str | None = None) -> dict:
    """Reliability-diagram points from ``sklearn.calibration.calibration_curve`` on equal-width bins.

    Top-label (confidence = highest probability, outcome = prediction correct) unless ``grade`` is given, then
    one-vs-rest for that grade. Empty bins are left out; ``count`` is the number of rows in each kept bin.
    """
    from sklearn.calibration import calibration_curve
    y, probs = _validated_inputs(y_true, probs)
    if grade is None:
        outcome, confidence = (probs.argmax(axis=1) == y).astype(int), probs.max(axis=1)
    else:
        k = SEVERITIES.index(grade)
        outcome, confidence = (y == k).astype(int), probs[:, k]
    confidence = np.clip(confidence, 0.0, 1.0)
    observed, predicted = calibration_curve(outcome, confidence, n_bins=n_bins, strategy="uniform", pos_label=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Same binning as calibration_curve: bins are (e_k, e_k+1], the first also holds 0.
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=n_bins)
    return {"kind": "top-label" if grade is None else grade, "n_bins": n_bins, "bin_edges": edges.tolist(),
            "mean_predicted": predicted.tolist(), "observed": observed.tolist(),
            "count": counts[counts > 0].tolist()}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: sum over equal-width confidence bins of (rows in bin / n) * |accuracy - mean confidence|.

    Confidence is a row's highest probability and accuracy the share of the bin's rows whose argmax is right;
    bins are (k/n_bins, (k+1)/n_bins], the first also holds 0 (``reliability_curve``'s bins).
    """
    curve = reliability_curve(y_true, probs, n_bins=n_bins)
    counts = np.asarray(curve["count"], dtype=float)
    gaps = np.abs(np.asarray(curve["observed"]) - np.asarray(curve["mean_predicted"]))
    return float(np.sum(counts / counts.sum() * gaps))


def mean_log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true grades (scikit-learn's log_loss, unweighted)."""
    from sklearn.metrics import log_loss
    y, probs = _validated_inputs(y_true, probs)
    return float(log_loss(y, y_proba=probs, labels=CLASS_IDS))
