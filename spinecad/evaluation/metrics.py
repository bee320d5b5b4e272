"""The paper's Table 2 metrics, their patient-level bootstrap intervals, ROC/PR curves and calibration.

Point metrics are scikit-learn's, called directly. Grades are class ids 0..2 in ``SEVERITIES`` order and the
predicted grade is the argmax of a row's probabilities. Per-class ROC-AUC and PR-AUC are one-vs-rest; a class
with no rows in ``y_true`` has no defined AUC, so it gets ``None`` and the macro average is taken over the
classes that have one (a note says so). Precision, recall and F1 follow scikit-learn's ``zero_division=0``
with all three grades as labels, as ``classification_report`` reports them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TypedDict

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from spinecad.labels import SEVERITIES

CLASS_IDS: list[int] = list(range(len(SEVERITIES)))
# Overall rows of Table 2 first; macro precision/recall are quoted in the paper's text.
OVERALL_METRICS: tuple[str, ...] = (
    "accuracy", "macro_f1", "weighted_f1", "macro_roc_auc", "macro_pr_auc", "macro_precision", "macro_recall",
)
CLASS_METRICS: tuple[str, ...] = ("precision", "recall", "f1", "roc_auc", "pr_auc")
# Resample weights held at once (resamples x rows): bounds bootstrap memory to ~32 MB per array.
_WEIGHT_CELLS_PER_BLOCK = 4_000_000


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


def compute_metrics(y_true: np.ndarray, probs: np.ndarray) -> Metrics:
    """Every metric of the paper's Table 2 for one model on one split (scikit-learn's definitions)."""
    y, probs = _validated_inputs(y_true, probs)
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
    )


def _mean_of_defined(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def confusion_matrices(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Confusion matrix (rows = true grade, columns = predicted) as counts and row-normalised fractions."""
    counts = confusion_matrix(y_true, y_pred, labels=CLASS_IDS)
    # A grade absent from y_true gets a row of zeros rather than NaN (scikit-learn's behaviour).
    fractions = confusion_matrix(y_true, y_pred, labels=CLASS_IDS, normalize="true")
    return {"labels": list(SEVERITIES), "counts": counts.tolist(), "row_normalised": fractions.tolist()}


def curve_points(y_true: np.ndarray, probs: np.ndarray, max_points: int = 200) -> dict[str, dict]:
    """One-vs-rest ROC (fpr, tpr, thresholds) and PR (recall, precision) points per grade, for charts.

    Curves are thinned to at most ``max_points`` evenly spaced points, keeping both ends. ROC's first threshold
    is +inf in scikit-learn and is stored as ``None``; an undefined curve is ``None``.
    """
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


# ---- Patient-level bootstrap -------------------------------------------------------------------------------
#
# A resample draws studies with replacement and keeps all of a drawn study's rows; it is held as integer row
# weights (how often each row's study was drawn), which is exactly a resample for every metric here. Calling
# scikit-learn per resample costs ~17 ms, mostly input checking (~18 s per 1000 resamples), so the resampled
# statistics are computed for a block of resamples at once in numpy from weighted confusion matrices and weighted
# cumulative counts over the score ranking, the computation scikit-learn does with ``sample_weight``. The
# tests check them against scikit-learn with the same weights; point estimates always come from compute_metrics.

def _resample_weights(study_ids: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield blocks of row weights, shape (block, n_rows), one row per resample of the studies."""
    _, row_study = np.unique(np.asarray(study_ids), return_inverse=True)
    n_studies = int(row_study.max()) + 1
    rng = np.random.default_rng(seed)
    block = max(1, _WEIGHT_CELLS_PER_BLOCK // len(row_study))
    for start in range(0, n_boot, block):
        size = min(block, n_boot - start)
        draws = rng.integers(0, n_studies, size=(size, n_studies))
        offsets = n_studies * np.arange(size)[:, None]
        times_drawn = np.bincount((draws + offsets).ravel(), minlength=size * n_studies).reshape(size, n_studies)
        yield times_drawn[:, row_study].astype(float)


def _divide(numerator: np.ndarray, denominator: np.ndarray, empty: float = 0.0) -> np.ndarray:
    """numerator / denominator, ``empty`` where the denominator is 0 (scikit-learn's zero_division)."""
    out = np.full(np.broadcast(numerator, denominator).shape, empty)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def _weighted_statistics(y: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    """Metrics for each row of ``weights`` (B, n), keyed ("overall", metric) or (grade, metric); NaN = undefined."""
    n_classes = len(SEVERITIES)
    cell = y * n_classes + probs.argmax(axis=1)
    cells = np.zeros((len(y), n_classes * n_classes))
    cells[np.arange(len(y)), cell] = 1.0
    confusion = (weights @ cells).reshape(-1, n_classes, n_classes)  # [resample, true, predicted]
    hits = np.diagonal(confusion, axis1=1, axis2=2)
    support, predicted = confusion.sum(axis=2), confusion.sum(axis=1)
    total = support.sum(axis=1)
    precision, recall = _divide(hits, predicted), _divide(hits, support)
    f1 = _divide(2 * hits, support + predicted)  # 2TP / (2TP + FP + FN)
    stats = {
        ("overall", "accuracy"): hits.sum(axis=1) / total,
        ("overall", "macro_f1"): f1.mean(axis=1),
        ("overall", "weighted_f1"): (f1 * support).sum(axis=1) / total,
        ("overall", "macro_precision"): precision.mean(axis=1),
        ("overall", "macro_recall"): recall.mean(axis=1),
    }
    roc_auc, pr_auc = np.empty_like(f1), np.empty_like(f1)
    for k, grade in enumerate(SEVERITIES):
        order = np.argsort(-probs[:, k], kind="stable")
        scores, is_grade = probs[order, k], y[order] == k
        last_of_each_score = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
        ordered = weights[:, order]
        true_pos = np.cumsum(ordered * is_grade, axis=1)[:, last_of_each_score]
        false_pos = np.cumsum(ordered * ~is_grade, axis=1)[:, last_of_each_score]
        positives, negatives = true_pos[:, -1:], false_pos[:, -1:]
        tpr = np.hstack([np.zeros_like(positives), _divide(true_pos, positives)])
        fpr = np.hstack([np.zeros_like(negatives), _divide(false_pos, negatives)])
        roc_auc[:, k] = np.where((positives[:, 0] > 0) & (negatives[:, 0] > 0), np.trapezoid(tpr, fpr, axis=1), np.nan)
        # Average precision: sum of precision at each threshold times the recall gained there.
        step_precision = _divide(true_pos, true_pos + false_pos, empty=1.0)
        pr_auc[:, k] = np.where(positives[:, 0] > 0, (np.diff(tpr, axis=1) * step_precision).sum(axis=1), np.nan)
        for name, values in (("precision", precision), ("recall", recall), ("f1", f1),
                             ("roc_auc", roc_auc), ("pr_auc", pr_auc)):
            stats[(grade, name)] = values[:, k]
    stats[("overall", "macro_roc_auc")] = _nanmean_rows(roc_auc)
    stats[("overall", "macro_pr_auc")] = _nanmean_rows(pr_auc)
    return stats


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    defined = np.isfinite(values)
    return _divide(np.where(defined, values, 0.0).sum(axis=1), defined.sum(axis=1), empty=np.nan)


def _bootstrap_statistics(study_ids, y_true, probs, n_boot: int, seed: int) -> dict[tuple[str, str], np.ndarray]:
    y, probs = _validated_inputs(y_true, probs)
    if len(np.asarray(study_ids)) != len(y):
        raise ValueError(f"study_ids has {len(np.asarray(study_ids))} rows but y_true has {len(y)}.")
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1.")
    blocks = [_weighted_statistics(y, probs, w) for w in _resample_weights(study_ids, n_boot, seed)]
    return {key: np.concatenate([block[key] for block in blocks]) for key in blocks[0]}


def _interval(values: np.ndarray, alpha: float) -> dict:
    valid = values[np.isfinite(values)]
    if len(valid) == 0:
        return {"low": None, "high": None, "n_valid": 0}
    low, high = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return {"low": float(low), "high": float(high), "n_valid": len(valid)}


def bootstrap_intervals(study_ids: np.ndarray, y_true: np.ndarray, probs: np.ndarray, n_boot: int = 1000,
                        seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile intervals from a patient-level bootstrap for every overall and per-class metric.

    ``n_valid`` counts the resamples in which a metric was defined (a resample can lack a rare grade).
    """
    resampled = _bootstrap_statistics(study_ids, y_true, probs, n_boot, seed)
    point = compute_metrics(y_true, probs)
    overall = {m: {"estimate": point[m], **_interval(resampled[("overall", m)], alpha)} for m in OVERALL_METRICS}
    per_class = {
        grade: {m: {"estimate": point["per_class"][grade][m], **_interval(resampled[(grade, m)], alpha)}
                for m in CLASS_METRICS}
        for grade in SEVERITIES
    }
    return {"method": "patient-level percentile bootstrap", "n_boot": n_boot, "seed": seed, "alpha": alpha,
            "n_studies": len(np.unique(np.asarray(study_ids))), "overall": overall, "per_class": per_class}


def paired_bootstrap_difference(study_ids: np.ndarray, y_true: np.ndarray, probs_a: np.ndarray,
                                probs_b: np.ndarray, metric: str = "macro_roc_auc", n_boot: int = 1000,
                                seed: int = 0, alpha: float = 0.05, grade: str | None = None) -> dict:
    """Metric of model A minus model B over the same patient-level resamples, with a percentile interval.

    ``metric`` is one of OVERALL_METRICS, or of CLASS_METRICS with ``grade``. ``p_value`` is the two-sided
    bootstrap p-value: twice the smaller share of resampled differences on either side of 0 (capped at 1).
    """
    group = "overall" if grade is None else grade
    allowed = OVERALL_METRICS if grade is None else CLASS_METRICS
    if metric not in allowed or group not in ("overall", *SEVERITIES):
        raise ValueError(f"Unknown metric {metric!r} for {group}; expected one of {', '.join(allowed)}.")
    diffs = (_bootstrap_statistics(study_ids, y_true, probs_a, n_boot, seed)[(group, metric)]
             - _bootstrap_statistics(study_ids, y_true, probs_b, n_boot, seed)[(group, metric)])
    a, b = compute_metrics(y_true, probs_a), compute_metrics(y_true, probs_b)
    point_a = a[metric] if grade is None else a["per_class"][grade][metric]
    point_b = b[metric] if grade is None else b["per_class"][grade][metric]
    return {"metric": metric, "grade": grade, **_difference_summary(diffs, point_a, point_b, alpha),
            "n_boot": n_boot, "seed": seed, "alpha": alpha}


def paired_bootstrap_differences(study_ids: np.ndarray, y_true: np.ndarray, probs_by_model: Mapping[str, np.ndarray],
                                 metrics: Sequence[str] = ("macro_f1", "macro_roc_auc"), n_boot: int = 1000,
                                 seed: int = 0, alpha: float = 0.05) -> list[dict]:
    """``paired_bootstrap_difference`` for every pair of models (A before B in the mapping's order) and metric.

    Each model is resampled once; as the resamples depend only on the studies and the seed, every pair is paired
    and each entry equals ``paired_bootstrap_difference`` of that pair. Entries carry ``a``, ``b`` and ``metric``.
    """
    unknown = [m for m in metrics if m not in OVERALL_METRICS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {', '.join(unknown)}; expected some of {', '.join(OVERALL_METRICS)}.")
    names = list(probs_by_model)
    resampled = {name: _bootstrap_statistics(study_ids, y_true, probs_by_model[name], n_boot, seed) for name in names}
    point = {name: compute_metrics(y_true, probs_by_model[name]) for name in names}
    pairs = []
    for metric in metrics:
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                diffs = resampled[a][("overall", metric)] - resampled[b][("overall", metric)]
                pairs.append({"a": a, "b": b, "metric": metric,
                              **_difference_summary(diffs, point[a][metric], point[b][metric], alpha)})
    return pairs


def _difference_summary(diffs: np.ndarray, point_a: float | None, point_b: float | None, alpha: float) -> dict:
    valid = diffs[np.isfinite(diffs)]
    p_value = min(1.0, 2 * min(np.mean(valid <= 0), np.mean(valid >= 0))) if len(valid) else None
    return {"difference": None if None in (point_a, point_b) else point_a - point_b,
            "mean_difference": float(valid.mean()) if len(valid) else None, **_interval(diffs, alpha),
            "p_value": None if p_value is None else float(p_value)}


def temperature_scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities a model gives once its logits are divided by ``temperature`` (temperature scaling).

    log(p) equals the logits up to a constant per row, which softmax ignores, so probabilities suffice.
    """
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number; got {temperature!r}.")
    logits = np.log(np.clip(np.asarray(probs, dtype=float), np.finfo(float).tiny, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)
