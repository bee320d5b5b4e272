"""The patient-level bootstrap: percentile intervals of every Table-2 metric and paired model differences.

A resample draws studies with replacement and keeps all of a drawn study's rows; it is held as integer row
weights (how often each row's study was drawn), which is exactly a resample for every metric here. Calling
scikit-learn per resample costs ~17 ms, mostly input checking (~18 s per 1000 resamples), so the resampled
statistics are computed for a block of resamples at once in numpy from weighted confusion matrices and weighted
cumulative counts over the score ranking, the computation scikit-learn does with ``sample_weight``. The
tests check them against scikit-learn with the same weights; point estimates always come from compute_metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from spinecad.evaluation.metrics import (
    CLASS_METRICS,
    OVERALL_METRICS,
    RSNA_METRICS,
    RSNA_SAMPLE_WEIGHTS,
    _validated_inputs,
    compute_metrics,
)
from spinecad.labels import SEVERITIES

# Resample weights held at once (resamples x rows): bounds bootstrap memory to ~32 MB per array.
_WEIGHT_CELLS_PER_BLOCK = 4_000_000


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
    rsna = _RsnaTerms(study_ids, y, probs)
    blocks = [{**_weighted_statistics(y, probs, w), **rsna.resampled(w)}
              for w in _resample_weights(study_ids, n_boot, seed)]
    return {key: np.concatenate([block[key] for block in blocks]) for key in blocks[0]}


class _RsnaTerms:
    """The two terms of the RSNA canal metric (``metrics.rsna_canal_metric``) under resampling weights: both are
    weighted means of per-row or per-study losses, so a resample only reweights them."""

    def __init__(self, study_ids: np.ndarray, y: np.ndarray, probs: np.ndarray) -> None:
        eps = np.finfo(float).eps  # scikit-learn's clipping
        probs = probs / probs.sum(axis=1, keepdims=True)
        self.row_weight = np.asarray(RSNA_SAMPLE_WEIGHTS)[y]
        self.row_loss = -np.log(np.clip(probs[np.arange(len(y)), y], eps, 1 - eps))
        studies, first_row, row_study = np.unique(np.asarray(study_ids), return_index=True, return_inverse=True)
        severe = y == len(SEVERITIES) - 1
        any_severe = np.zeros(len(studies), bool)
        np.logical_or.at(any_severe, row_study, severe)
        p_severe, weight = np.zeros(len(studies)), np.zeros(len(studies))
        np.maximum.at(p_severe, row_study, probs[:, -1])
        np.maximum.at(weight, row_study, self.row_weight)
        p = np.clip(np.where(any_severe, p_severe, 1 - p_severe), eps, 1 - eps)
        self.study_loss, self.study_weight, self.first_row = -np.log(p), weight, first_row

    def resampled(self, weights: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
        canal = (weights @ (self.row_weight * self.row_loss)) / (weights @ self.row_weight)
        drawn = weights[:, self.first_row]  # every row of a study carries its study's draw count
        any_severe = (drawn @ (self.study_weight * self.study_loss)) / (drawn @ self.study_weight)
        return {("overall", "rsna_canal_log_loss"): canal, ("overall", "rsna_any_severe_log_loss"): any_severe,
                ("overall", "rsna_canal_score"): (canal + any_severe) / 2}


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
    point = compute_metrics(y_true, probs, study_ids)
    overall = {m: {"estimate": point[m], **_interval(resampled[("overall", m)], alpha)}
               for m in (*OVERALL_METRICS, *RSNA_METRICS)}
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
