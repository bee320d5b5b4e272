"""spinecad.evaluation.metrics against scikit-learn called directly on the same predictions."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.preprocessing import label_binarize

from spinecad.evaluation import bootstrap, metrics, store
from spinecad.evaluation.scoring import load_canal_labels
from spinecad.inference.manifest import read_manifest
from spinecad.labels import LEVEL_KEYS, LEVELS, SEVERITIES, SEVERITY_COLUMNS, row_id
from tests.conftest import DEMO_MANIFEST
from train.cli import main as train_main

DEMO_ROOT = read_manifest(DEMO_MANIFEST).evaluation_dir


def fake_predictions(seed: int, n_studies: int = 60, levels: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Study ids, true grades (skewed like the paper's) and probabilities that lean towards the truth."""
    rng = np.random.default_rng(seed)
    study_ids = np.repeat(1000 + np.arange(n_studies), levels)
    y_true = rng.choice(3, size=len(study_ids), p=[0.75, 0.17, 0.08])
    logits = rng.normal(size=(len(y_true), 3)) + 1.5 * np.eye(3)[y_true]
    # Two decimals make tied scores, which the ranking metrics must handle as scikit-learn does.
    probs = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 2)
    return study_ids, y_true, probs


@pytest.fixture
def predictions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return fake_predictions(seed=7)


def test_compute_metrics_equals_sklearn(predictions):
    _, y, probs = predictions
    y_pred = probs.argmax(axis=1)
    result = metrics.compute_metrics(y, probs)
    labels = [0, 1, 2]
    assert result["n"] == len(y)
    assert result["accuracy"] == pytest.approx(accuracy_score(y, y_pred), abs=1e-12)
    assert result["macro_f1"] == pytest.approx(f1_score(y, y_pred, average="macro", labels=labels), abs=1e-12)
    assert result["weighted_f1"] == pytest.approx(f1_score(y, y_pred, average="weighted", labels=labels), abs=1e-12)
    assert result["macro_precision"] == pytest.approx(precision_score(y, y_pred, average="macro"), abs=1e-12)
    assert result["macro_recall"] == pytest.approx(recall_score(y, y_pred, average="macro"), abs=1e-12)
    # The multiclass one-vs-rest call insists on rows summing to 1.
    normalised = probs / probs.sum(axis=1, keepdims=True)
    assert metrics.compute_metrics(y, normalised)["macro_roc_auc"] == pytest.approx(
        roc_auc_score(y, normalised, multi_class="ovr", average="macro"), abs=1e-12)
    assert result["macro_pr_auc"] == pytest.approx(
        average_precision_score(label_binarize(y, classes=labels), probs, average="macro"), abs=1e-12)
    precision, recall, f1, support = precision_recall_fscore_support(y, y_pred, labels=labels)
    for k, grade in enumerate(SEVERITIES):
        per_class = result["per_class"][grade]
        assert per_class["precision"] == pytest.approx(precision[k], abs=1e-12)
        assert per_class["recall"] == pytest.approx(recall[k], abs=1e-12)
        assert per_class["f1"] == pytest.approx(f1[k], abs=1e-12)
        assert per_class["roc_auc"] == pytest.approx(roc_auc_score(y == k, probs[:, k]), abs=1e-12)
        assert per_class["pr_auc"] == pytest.approx(average_precision_score(y == k, probs[:, k]), abs=1e-12)
        assert result["class_counts"][grade] == support[k]
    assert result["notes"] == []
    json.dumps(result, allow_nan=False)


def test_absent_class_gives_null_aucs_and_macro_over_the_rest(predictions):
    _, y, probs = predictions
    keep = y != 2
    y, probs = y[keep], probs[keep]
    result = metrics.compute_metrics(y, probs)
    severe = result["per_class"]["Severe"]
    assert severe["roc_auc"] is None and severe["pr_auc"] is None
    two_class_aucs = [roc_auc_score(y == k, probs[:, k]) for k in (0, 1)]
    assert result["macro_roc_auc"] == pytest.approx(np.mean(two_class_aucs), abs=1e-12)
    assert result["class_counts"]["Severe"] == 0
    assert any("Severe" in note for note in result["notes"])
    json.dumps(result, allow_nan=False)


def test_single_class_split_does_not_crash():
    y = np.zeros(6, dtype=int)
    probs = np.tile([0.7, 0.2, 0.1], (6, 1))
    result = metrics.compute_metrics(y, probs)
    assert result["macro_roc_auc"] is None
    assert result["per_class"]["Normal/Mild"]["pr_auc"] == pytest.approx(1.0)
    assert result["macro_pr_auc"] == pytest.approx(1.0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="shape"):
        metrics.compute_metrics(np.array([0, 1]), np.ones((3, 3)) / 3)
    with pytest.raises(ValueError, match="class ids"):
        metrics.compute_metrics(np.array([0, 3]), np.ones((2, 3)) / 3)


def test_confusion_matrices_equal_sklearn(predictions):
    _, y, probs = predictions
    y_pred = probs.argmax(axis=1)
    result = metrics.confusion_matrices(y, y_pred)
    assert result["labels"] == list(SEVERITIES)
    assert result["counts"] == confusion_matrix(y, y_pred).tolist()
    np.testing.assert_allclose(result["row_normalised"], confusion_matrix(y, y_pred, normalize="true"))


def test_curve_points_follow_sklearn_and_are_thinned(predictions):
    _, y, probs = predictions
    full = metrics.curve_points(y, probs, max_points=10_000)
    thin = metrics.curve_points(y, probs, max_points=20)
    for k, grade in enumerate(SEVERITIES):
        fpr, tpr, _ = roc_curve(y == k, probs[:, k])
        assert full[grade]["roc"]["fpr"] == fpr.tolist() and full[grade]["roc"]["tpr"] == tpr.tolist()
        assert full[grade]["roc"]["thresholds"][0] is None  # scikit-learn's +inf
        assert len(thin[grade]["roc"]["fpr"]) <= 20 and len(thin[grade]["pr"]["recall"]) <= 20
        assert thin[grade]["roc"]["fpr"][0] == 0.0 and thin[grade]["roc"]["tpr"][-1] == 1.0
        assert full[grade]["prevalence"] == pytest.approx(np.mean(y == k))
    json.dumps(full, allow_nan=False)


def test_resampled_statistics_equal_sklearn_with_the_resample(predictions):
    study_ids, y, probs = predictions
    weights = next(bootstrap._resample_weights(study_ids, n_boot=4, seed=3))
    stats = bootstrap._weighted_statistics(y, probs, weights)
    y_pred = probs.argmax(axis=1)
    for b, w in enumerate(weights):
        # All rows of a study share its draw count: a patient-level resample.
        assert all(len(np.unique(w[study_ids == s])) == 1 for s in np.unique(study_ids))
        rows = np.repeat(np.arange(len(y)), w.astype(int))  # the resample spelled out as rows
        yr, pr, pred_r = y[rows], probs[rows], y_pred[rows]
        assert stats[("overall", "accuracy")][b] == pytest.approx(accuracy_score(yr, pred_r), abs=1e-12)
        assert stats[("overall", "macro_f1")][b] == pytest.approx(
            f1_score(yr, pred_r, average="macro", labels=[0, 1, 2], zero_division=0), abs=1e-12)
        assert stats[("overall", "weighted_f1")][b] == pytest.approx(
            f1_score(yr, pred_r, average="weighted", labels=[0, 1, 2], zero_division=0), abs=1e-12)
        point = metrics.compute_metrics(yr, pr)
        assert stats[("overall", "macro_roc_auc")][b] == pytest.approx(point["macro_roc_auc"], abs=1e-12)
        assert stats[("overall", "macro_pr_auc")][b] == pytest.approx(point["macro_pr_auc"], abs=1e-12)
        for k, grade in enumerate(SEVERITIES):
            assert stats[(grade, "roc_auc")][b] == pytest.approx(roc_auc_score(yr == k, pr[:, k]), abs=1e-12)
            assert stats[(grade, "pr_auc")][b] == pytest.approx(
                average_precision_score(yr == k, pr[:, k]), abs=1e-12)
            assert stats[(grade, "roc_auc")][b] == pytest.approx(
                roc_auc_score(y == k, probs[:, k], sample_weight=w), abs=1e-12)


def test_bootstrap_is_seeded_and_brackets_the_estimate(predictions):
    study_ids, y, probs = predictions
    first = bootstrap.bootstrap_intervals(study_ids, y, probs, n_boot=200, seed=1)
    again = bootstrap.bootstrap_intervals(study_ids, y, probs, n_boot=200, seed=1)
    other = bootstrap.bootstrap_intervals(study_ids, y, probs, n_boot=200, seed=2)
    assert first == again
    assert first["overall"]["macro_roc_auc"] != other["overall"]["macro_roc_auc"]
    point = metrics.compute_metrics(y, probs)
    for name in ("accuracy", "macro_f1", "weighted_f1", "macro_roc_auc", "macro_pr_auc"):
        interval = first["overall"][name]
        assert interval["estimate"] == point[name]
        assert interval["low"] <= interval["estimate"] <= interval["high"]
        assert interval["n_valid"] == 200
    for grade in SEVERITIES:
        for name in ("f1", "roc_auc"):
            interval = first["per_class"][grade][name]
            assert interval["low"] <= interval["estimate"] <= interval["high"]
    assert first["n_studies"] == len(np.unique(study_ids))
    json.dumps(first, allow_nan=False)


def test_paired_difference_of_a_model_with_itself_is_exactly_zero(predictions):
    study_ids, y, probs = predictions
    for metric in ("macro_roc_auc", "accuracy", "macro_f1"):
        result = bootstrap.paired_bootstrap_difference(study_ids, y, probs, probs, metric=metric, n_boot=100, seed=0)
        assert (result["difference"], result["mean_difference"], result["low"], result["high"]) == (0, 0, 0, 0)
        assert result["p_value"] == 1.0


def test_paired_difference_sees_a_worse_model(predictions):
    study_ids, y, probs = predictions
    noisy = 0.3 * probs + 0.7 * np.random.default_rng(0).dirichlet([1, 1, 1], size=len(y))
    result = bootstrap.paired_bootstrap_difference(study_ids, y, probs, noisy, metric="roc_auc", grade="Severe",
                                                 n_boot=200, seed=0)
    expected = roc_auc_score(y == 2, probs[:, 2]) - roc_auc_score(y == 2, noisy[:, 2])
    assert result["difference"] == pytest.approx(expected, abs=1e-12)
    assert 0 < result["low"] <= result["high"] and result["p_value"] < 0.05
    with pytest.raises(ValueError, match="Unknown metric"):
        bootstrap.paired_bootstrap_difference(study_ids, y, probs, noisy, metric="auc")


def test_expected_calibration_error_on_a_hand_made_case():
    # Bin (0.9, 1.0]: confidence 0.95, half right; bin (0.5, 0.6]: confidence 0.6, all right (n_bins=10).
    probs = np.array([[0.95, 0.03, 0.02], [0.95, 0.03, 0.02], [0.6, 0.3, 0.1], [0.2, 0.6, 0.2]])
    y = np.array([0, 1, 0, 1])
    expected = 0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.6)
    assert metrics.expected_calibration_error(y, probs, n_bins=10) == pytest.approx(expected)
    assert metrics.expected_calibration_error(y, probs, n_bins=10) == pytest.approx(0.425)


def test_expected_calibration_error_equals_a_direct_numpy_computation(predictions):
    _, y, probs = predictions
    probs = probs / probs.sum(axis=1, keepdims=True)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, 16)
    direct = 0.0
    for low, high in itertools.pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high) if low > 0 else (confidence <= high)
        if in_bin.any():
            direct += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    assert metrics.expected_calibration_error(y, probs, n_bins=15) == pytest.approx(direct, abs=1e-12)


def test_reliability_curve_is_sklearns_calibration_curve(predictions):
    _, y, probs = predictions
    curve = metrics.reliability_curve(y, probs, n_bins=10, grade="Moderate")
    observed, predicted = calibration_curve(y == 1, probs[:, 1], n_bins=10)
    np.testing.assert_allclose(curve["observed"], observed)
    np.testing.assert_allclose(curve["mean_predicted"], predicted)
    assert sum(curve["count"]) == len(y) and len(curve["count"]) == len(observed)


# ---- The RSNA 2024 competition metric ------------------------------------------------------------------------

def competition_canal_score(solution: pd.DataFrame, submission: pd.DataFrame) -> tuple[float, float, float]:
    """The canal part of the competition's metric, written as its published scoring code is: one-hot grades,
    sample weights 1/2/4, sklearn's log_loss per condition, and the any-severe term over each study's maxima."""
    levels = ["normal_mild", "moderate", "severe"]
    solution = solution.copy()
    solution[levels] = np.eye(3)[solution["severity"].map(SEVERITIES.index).to_numpy()]
    solution["sample_weight"] = solution["severity"].map({"Normal/Mild": 1, "Moderate": 2, "Severe": 4})
    submission = submission.set_index("row_id").loc[solution["row_id"]].reset_index()
    submission[levels] = submission[levels].div(submission[levels].sum(axis=1), axis=0)
    submission["study_id"] = solution["study_id"].to_numpy()
    canal = log_loss(solution[levels].to_numpy(), y_proba=submission[levels].to_numpy(),
                     sample_weight=solution["sample_weight"].to_numpy())
    labels = solution.groupby("study_id")["severe"].max()
    weights = solution.groupby("study_id")["sample_weight"].max()
    predictions = submission.groupby("study_id")["severe"].max()
    any_severe = log_loss(labels.to_numpy(), y_proba=predictions.loc[labels.index].to_numpy(),
                          sample_weight=weights.to_numpy(), labels=[0, 1])
    return canal, any_severe, float(np.average([canal, any_severe], weights=[1, 1]))


def _stored_and_direct(frame: pd.DataFrame) -> tuple[tuple, tuple]:
    y = frame["severity"].map(SEVERITIES.index).to_numpy()
    result = metrics.compute_metrics(y, frame[list(SEVERITY_COLUMNS)].to_numpy(), frame["study_id"].to_numpy())
    ours = tuple(result[name] for name in metrics.RSNA_METRICS)
    return ours, competition_canal_score(frame, frame[["row_id", *SEVERITY_COLUMNS]])


def test_the_rsna_metric_equals_the_competitions_own_computation_on_the_demo_predictions():
    for key in ("resnet152-cpu", "ensemble"):
        for split in ("val", "test"):
            frame = store.load_predictions(DEMO_ROOT, key, split)
            ours, direct = _stored_and_direct(frame)
            np.testing.assert_allclose(ours, direct, rtol=0, atol=1e-9)
            stored = store.load_metrics(DEMO_ROOT, key, split).metrics
            np.testing.assert_allclose([stored.value(name) for name in metrics.RSNA_METRICS], direct, atol=1e-9)


def test_the_rsna_metric_of_a_random_kaggle_file_through_train_score(tmp_path, capsys):
    rng = np.random.default_rng(4)
    studies = 5_000_000 + np.arange(40)
    labels = pd.DataFrame({"study_id": studies, **{
        f"spinal_canal_stenosis_{key}": rng.choice(SEVERITIES, size=len(studies), p=[0.7, 0.2, 0.1])
        for key in LEVEL_KEYS}})
    labels.iloc[3, 2] = None  # an unlabelled level is not scored
    labels.to_csv(tmp_path / "train.csv", index=False)
    rows = [row_id(study, level) for study in studies for level in LEVELS]
    submission = pd.DataFrame({"row_id": rows, **dict(zip(SEVERITY_COLUMNS, rng.random((3, len(rows))) * 3,
                                                          strict=True))})
    submission.to_csv(tmp_path / "submission.csv", index=False)
    assert train_main(["score", "--data-dir", str(tmp_path), "--predictions", str(tmp_path / "submission.csv")]) == 0
    printed = json.loads(capsys.readouterr().out)
    solution = load_canal_labels(tmp_path / "train.csv")
    direct = competition_canal_score(solution, submission)
    assert [printed[name] for name in metrics.RSNA_METRICS] == pytest.approx(direct, abs=1e-9)
