"""The evaluation-artefact format (write, validate, read, refuse) and scoring of Kaggle-format predictions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spinecad.evaluation import metrics
from spinecad.evaluation import store as evaluation
from spinecad.evaluation.scoring import ScoringError, load_canal_labels, match_predictions, score_predictions
from spinecad.evaluation.store import ArtefactError
from spinecad.labels import LEVELS, SEVERITIES, SEVERITY_COLUMNS, row_id

RSNA_TRAIN_CSV = Path(__file__).resolve().parents[2] / "shared/data/rsna2024/train.csv"
MODELS = (("vit_b16", "ViT-B/16"), ("resnet152", "ResNet-152"))


def predictions_frame(seed: int, n_studies: int = 30) -> pd.DataFrame:
    """A predictions.csv as the training package writes it, for fake studies."""
    rng = np.random.default_rng(seed)
    study_ids = np.repeat(5000 + np.arange(n_studies), len(LEVELS))
    levels = np.tile(LEVELS, n_studies)
    y_true = rng.choice(3, size=len(study_ids), p=[0.7, 0.2, 0.1])
    logits = rng.normal(size=(len(y_true), 3)) + 1.2 * np.eye(3)[y_true]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame({
        "row_id": [row_id(s, lv) for s, lv in zip(study_ids, levels, strict=True)],
        "study_id": study_ids,
        "level": levels,
        "severity": [SEVERITIES[k] for k in y_true],
    })
    for k, column in enumerate(SEVERITY_COLUMNS):
        frame[column] = probs[:, k]
    return frame


def history_rows() -> list[dict]:
    return [{"epoch": e, "phase": "frozen" if e < 2 else "partial", "train_loss": 1.0 / e, "train_accuracy": 0.5,
             "train_macro_f1": 0.4, "val_loss": float("nan") if e == 1 else 0.9, "val_accuracy": 0.6,
             "val_macro_f1": 0.45, "lr": 1e-4, "seconds": 12.5} for e in (1, 2, 3)]


@pytest.fixture
def evaluation_root(tmp_path: Path) -> tuple[Path, dict]:
    """An evaluation root with two models and their ensemble on val and test; returns it and what was written."""
    root = tmp_path / "evaluation"
    written = {}
    for split, offset in (("val", 0), ("test", 10)):
        frames = [predictions_frame(seed=i + offset) for i in range(len(MODELS))]
        for frame in frames[1:]:  # every model sees the same rows and true grades
            frame[["row_id", "study_id", "level", "severity"]] = frames[0][["row_id", "study_id", "level", "severity"]]
        frames.append(evaluation.mean_ensemble(frames))
        for (key, _), frame in zip((*MODELS, (evaluation.ENSEMBLE_KEY, "Ensemble")), frames, strict=True):
            written[(key, split)] = (frame, evaluation.write_split_evaluation(root, key, split, frame, n_boot=50))
    for key, _ in MODELS:
        evaluation.write_history(root, key, history_rows())
    evaluation.write_summary(root, [*MODELS, (evaluation.ENSEMBLE_KEY, "Ensemble")], demo=True,
                             description="synthetic phantom data")
    return root, written


def test_round_trip_write_validate_load(evaluation_root):
    root, written = evaluation_root
    checked = evaluation.validate_tree(root)
    assert len(checked) == 1 + 3 * 2 * 3 + 2  # summary, 3 files x 2 splits x 3 models, 2 histories
    summary = evaluation.load_summary(root)
    assert summary.demo and summary.splits == ("val", "test") and summary.schema_version == 1
    assert [m.key for m in summary.models] == ["vit_b16", "resnet152", "ensemble"]
    for (key, split), (frame, document) in written.items():
        pd.testing.assert_frame_equal(evaluation.load_predictions(root, key, split), frame)
        assert evaluation.load_metrics(root, key, split) == document
        curves = evaluation.load_curves(root, key, split)
        assert list(curves.roc_pr) == list(SEVERITIES) and curves.reliability.kind == "top-label"
    expected_history = pd.DataFrame(history_rows())
    pd.testing.assert_frame_equal(evaluation.load_history(root, "vit_b16"), expected_history, check_dtype=False)


def test_written_metrics_are_compute_metrics_of_the_predictions(evaluation_root):
    root, written = evaluation_root
    frame, _ = written[("vit_b16", "test")]
    y_true = frame["severity"].map(SEVERITIES.index).to_numpy()
    expected = metrics.compute_metrics(y_true, frame[list(SEVERITY_COLUMNS)].to_numpy(), frame["study_id"].to_numpy())
    assert evaluation.load_metrics(root, "vit_b16", "test").metrics.model_dump() == expected


def test_truncated_metrics_json_is_refused_naming_the_file(evaluation_root):
    root, _ = evaluation_root
    path = evaluation.metrics_path(root, "vit_b16", "val")
    path.write_text(path.read_text()[: len(path.read_text()) // 2])
    with pytest.raises(ArtefactError, match=re.escape(str(path))) as caught:
        evaluation.load_metrics(root, "vit_b16", "val")
    assert caught.value.path == path
    with pytest.raises(ArtefactError, match=re.escape(str(path))):
        evaluation.validate_tree(root)


@pytest.mark.parametrize(("change", "problem"), [
    (lambda d: d["metrics"]["per_class"]["Severe"].pop("roc_auc"),
     r"metrics\.per_class\.Severe\.roc_auc: Field required"),
    (lambda d: d["metrics"].update(n=True), r"metrics\.n: Input should be a valid integer"),
    (lambda d: d["metrics"].update(accuracy="0.9"), r"metrics\.accuracy: Input should be a valid number"),
    (lambda d: d["intervals"]["overall"]["macro_f1"].update(low=float("inf")), r"intervals\.overall\.macro_f1\.low"),
    (lambda d: d["confusion"]["counts"].pop(), r"confusion\.counts: Value error, expected a 3 x 3 matrix"),
    (lambda d: d["metrics"]["class_counts"].pop("Moderate"), r"metrics\.class_counts: Value error, expected one entry"),
    (lambda d: d.update(split="holdout"), r"split: Value error, Unknown split 'holdout'"),
    (lambda d: d["calibration"].update(colour="blue"), r"calibration\.colour: Extra inputs are not permitted"),
])
def test_a_metrics_json_that_breaks_the_format_is_refused_with_the_field_path(evaluation_root, change, problem):
    root, _ = evaluation_root
    path = evaluation.metrics_path(root, "resnet152", "test")
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    with pytest.raises(ArtefactError, match=re.escape(str(path)) + ": " + problem):
        evaluation.load_metrics(root, "resnet152", "test")


def test_files_written_before_calibration_existed_still_load(evaluation_root):
    # Such files have no "calibrated" key and no "reliability_calibrated" curve at all (not even null).
    root, written = evaluation_root
    metrics_file, curves_file = (evaluation.metrics_path(root, "vit_b16", "val"),
                                 evaluation.curves_path(root, "vit_b16", "val"))
    for path, parent, key in ((metrics_file, "calibration", "calibrated"),
                              (curves_file, None, "reliability_calibrated")):
        document = json.loads(path.read_text())
        (document[parent] if parent else document).pop(key, None)
        path.write_text(json.dumps(document))
    assert evaluation.load_metrics(root, "vit_b16", "val").calibration.calibrated is None
    assert evaluation.load_curves(root, "vit_b16", "val").reliability_calibrated is None
    assert evaluation.load_metrics(root, "vit_b16", "val").metrics == written[("vit_b16", "val")][1].metrics


def test_csv_with_a_missing_column_is_refused_naming_the_file(evaluation_root):
    root, _ = evaluation_root
    path = evaluation.predictions_path(root, "ensemble", "test")
    pd.read_csv(path).drop(columns="severe").to_csv(path, index=False)
    with pytest.raises(ArtefactError, match=re.escape(str(path)) + ".*missing column.*severe"):
        evaluation.load_predictions(root, "ensemble", "test")
    history = evaluation.history_path(root, "vit_b16")
    pd.read_csv(history).drop(columns="lr").to_csv(history, index=False)
    with pytest.raises(ArtefactError, match=re.escape(str(history)) + ".*lr"):
        evaluation.load_history(root, "vit_b16")


def test_missing_file_and_stale_metrics_are_refused(evaluation_root):
    root, _ = evaluation_root
    evaluation.curves_path(root, "vit_b16", "test").unlink()
    with pytest.raises(ArtefactError, match=r"curves\.json: file is missing"):
        evaluation.load_curves(root, "vit_b16", "test")
    predictions = evaluation.predictions_path(root, "resnet152", "val")
    frame = pd.read_csv(predictions)
    frame.iloc[:-5].to_csv(predictions, index=False)  # cut at a line boundary: still a valid CSV
    with pytest.raises(ArtefactError, match="2 problem") as caught:
        evaluation.validate_tree(root)
    assert "class counts differ" in str(caught.value)


def test_bad_predictions_are_refused_before_writing(tmp_path):
    frame = predictions_frame(seed=0)
    frame.loc[3, "moderate"] += 0.5
    with pytest.raises(ValueError, match=f"do not sum to 1.*{frame.loc[3, 'row_id']}"):
        evaluation.write_split_evaluation(tmp_path, "vit_b16", "val", frame, n_boot=10)
    frame = predictions_frame(seed=0)
    frame.loc[0, "row_id"] = "123_spinal_canal_stenosis_l1_l2"
    with pytest.raises(ValueError, match="does not match study_id/level"):
        evaluation.write_split_evaluation(tmp_path, "vit_b16", "val", frame, n_boot=10)
    with pytest.raises(ValueError, match="Model key"):
        evaluation.write_split_evaluation(tmp_path, "../elsewhere", "val", predictions_frame(seed=0), n_boot=10)
    assert not any(tmp_path.iterdir())


def test_mean_ensemble_is_the_mean_of_the_models():
    first, second = predictions_frame(seed=1), predictions_frame(seed=1)
    second[list(SEVERITY_COLUMNS)] = np.roll(second[list(SEVERITY_COLUMNS)].to_numpy(), 1, axis=1)
    ensemble = evaluation.mean_ensemble([first, second.iloc[::-1]])  # row order does not matter
    expected = (first[list(SEVERITY_COLUMNS)].to_numpy() + second[list(SEVERITY_COLUMNS)].to_numpy()) / 2
    np.testing.assert_allclose(ensemble[list(SEVERITY_COLUMNS)].to_numpy(), expected)


# ---- Scoring a Kaggle-format predictions file --------------------------------------------------------------

TRAIN_CSV = """study_id,spinal_canal_stenosis_l1_l2,spinal_canal_stenosis_l2_l3,spinal_canal_stenosis_l3_l4,\
spinal_canal_stenosis_l4_l5,spinal_canal_stenosis_l5_s1,left_neural_foraminal_narrowing_l1_l2
101,Normal/Mild,Normal/Mild,Moderate,Severe,Normal/Mild,Moderate
102,Normal/Mild,,Normal/Mild,Moderate,Severe,Normal/Mild
103,Severe,Normal/Mild,Normal/Mild,Normal/Mild,Moderate,Normal/Mild
"""


@pytest.fixture
def labels(tmp_path: Path) -> pd.DataFrame:
    path = tmp_path / "train.csv"
    path.write_text(TRAIN_CSV)
    return load_canal_labels(path)


def test_load_canal_labels_drops_and_counts_empty_grades(labels):
    assert list(labels.columns) == ["row_id", "study_id", "level", "severity"]
    assert len(labels) == 14 and labels.attrs["n_unlabelled"] == 1
    assert labels["row_id"].iloc[3] == "101_spinal_canal_stenosis_l4_l5" and labels["severity"].iloc[3] == "Severe"
    assert "102_spinal_canal_stenosis_l2_l3" not in set(labels["row_id"])


def test_score_predictions_counts_every_kind_of_row(labels, tmp_path):
    rows = ["row_id,normal_mild,moderate,severe"]
    for _, label in labels.iterrows():
        if label["row_id"] == "103_spinal_canal_stenosis_l5_s1":
            continue  # a label without prediction
        truth = SEVERITIES.index(label["severity"])
        probs = [0.1, 0.1, 0.1]
        probs[truth] = 0.8
        if label["row_id"] == "101_spinal_canal_stenosis_l1_l2":
            probs = [8, 1, 1]  # unnormalised: renormalised, still scored
        if label["row_id"] == "103_spinal_canal_stenosis_l1_l2":
            probs = [0.5, -0.1, 0.6]  # negative: invalid
        rows.append(f"{label['row_id']},{probs[0]},{probs[1]},{probs[2]}")
    rows += [
        "102_spinal_canal_stenosis_l2_l3,0.3,0.3,0.4",  # its label is empty: ignored
        "999_spinal_canal_stenosis_l1_l2,0.3,0.3,0.4",  # unknown study: ignored
        "101_left_neural_foraminal_narrowing_l1_l2,0.3,0.3,0.4",  # another condition: skipped
        "102_spinal_canal_stenosis_l4_l5,0,0,0",  # all zero: invalid
        "101_spinal_canal_stenosis_l9_l9,0.2,abc,0.5",  # bad row id and non-numeric
    ]
    # The all-zero row replaces the valid 102 l4_l5 row: one prediction per row id.
    rows = [r for r in rows if not r.startswith("102_spinal_canal_stenosis_l4_l5,0.1")]
    path = tmp_path / "predictions.csv"
    path.write_text("\n".join(rows) + "\n")
    result = score_predictions(path, labels)
    assert result["n"] == 11  # 14 labels - 1 unpredicted - 1 negative - 1 all zero
    assert result["n_unpredicted_labels"] == 3
    assert result["n_unlabelled_predictions"] == 2
    assert result["n_other_condition_rows"] == 1
    assert result["n_invalid_rows"] == 3
    reasons = {row["row_id"]: row["reason"] for row in result["invalid_rows"]}
    assert "negative" in reasons["103_spinal_canal_stenosis_l1_l2"]
    assert "all probabilities are 0" in reasons["102_spinal_canal_stenosis_l4_l5"]
    assert "row_id is not" in reasons["101_spinal_canal_stenosis_l9_l9"]
    assert result["accuracy"] == 1.0 and result["macro_roc_auc"] == 1.0
    assert any("renormalised" in note for note in result["notes"])
    json.dumps(result, allow_nan=False)
    with pytest.raises(ScoringError, match=r"103_spinal_canal_stenosis_l1_l2.*negative"):
        score_predictions(path, labels, strict=True)


def test_scoring_equals_compute_metrics_and_gives_intervals(labels):
    frame = labels[["row_id"]].copy()
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=len(frame))
    frame[list(SEVERITY_COLUMNS)] = probs * 7  # scale does not matter
    result = score_predictions(frame, labels, n_boot=20)
    expected = metrics.compute_metrics(labels["severity"].map(SEVERITIES.index).to_numpy(), probs)
    assert result["macro_pr_auc"] == pytest.approx(expected["macro_pr_auc"], abs=1e-12)
    assert result["per_class"]["Moderate"]["f1"] == pytest.approx(expected["per_class"]["Moderate"]["f1"])
    assert result["intervals"]["n_boot"] == 20


def test_matched_predictions_are_an_evaluation_predictions_frame(labels, tmp_path):
    frame = labels[["row_id"]].copy()
    frame[list(SEVERITY_COLUMNS)] = [2.0, 1.0, 1.0]
    matched = match_predictions(frame, labels).predictions
    assert tuple(matched.columns) == evaluation.PREDICTION_COLUMNS
    np.testing.assert_allclose(matched[list(SEVERITY_COLUMNS)].sum(axis=1), 1.0)
    document = evaluation.write_split_evaluation(tmp_path, "outside", "test", matched, n_boot=10)
    assert document.metrics.n == len(labels)


def test_malformed_predictions_and_labels_are_refused_with_a_clear_message(labels, tmp_path):
    path = tmp_path / "submission.csv"
    path.write_text("row_id,normal_mild,moderate\n101_spinal_canal_stenosis_l1_l2,0.5,0.5\n")
    with pytest.raises(ScoringError, match=r"submission\.csv lacks column\(s\) severe"):
        score_predictions(path, labels)
    path.write_text("row_id,normal_mild,moderate,severe\n999_spinal_canal_stenosis_l1_l2,0.5,0.3,0.2\n")
    with pytest.raises(ScoringError, match="no valid prediction matches"):
        score_predictions(path, labels)
    bad_labels = tmp_path / "bad_train.csv"
    bad_labels.write_text("study_id,spinal_canal_stenosis_l1_l2\n1,Normal/Mild\n")
    with pytest.raises(ScoringError, match=r"lacks column.*spinal_canal_stenosis_l2_l3"):
        load_canal_labels(bad_labels)
    with pytest.raises(ScoringError, match="not found"):
        load_canal_labels(tmp_path / "absent.csv")


@pytest.mark.skipif(not RSNA_TRAIN_CSV.is_file(), reason="RSNA 2024 train.csv not in shared/data")
def test_constant_class_priors_score_chance_on_rsna_labels(tmp_path):
    labels = load_canal_labels(RSNA_TRAIN_CSV)
    grades = pd.read_csv(RSNA_TRAIN_CSV, usecols=lambda c: c.startswith("spinal_canal_stenosis_"))
    assert len(labels) == grades.notna().to_numpy().sum()
    priors = labels["severity"].value_counts(normalize=True).reindex(SEVERITIES).to_numpy()
    submission = pd.DataFrame({"row_id": labels["row_id"]})
    submission[list(SEVERITY_COLUMNS)] = np.tile(priors, (len(labels), 1))
    path = tmp_path / "priors.csv"
    submission.to_csv(path, index=False)
    result = score_predictions(path, labels)
    assert result["n"] == len(labels)
    assert result["macro_roc_auc"] == pytest.approx(0.5)
    assert result["n_unpredicted_labels"] == 0 and result["n_invalid_rows"] == 0
