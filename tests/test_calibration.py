"""Temperature scaling: the fit, what the training package stores, what the artefacts say and what the predictor does.

ECE here is recomputed by hand (a loop over bins), independent of ``spinecad.evaluation.metrics``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import log_loss

from spinecad import ui
from spinecad.evaluation import metrics
from spinecad.evaluation import store as evaluation
from spinecad.inference.manifest import read_manifest
from spinecad.labels import SEVERITIES, SEVERITY_COLUMNS
from spinecad.models.calibration import temperature_scaled
from spinecad.models.model import SpineCADModel
from tests.conftest import DEMO_MANIFEST
from train.calibrate import TEMPERATURE_BOUNDS, fit_temperature, negative_log_likelihood

DEMO_ROOT = read_manifest(DEMO_MANIFEST).evaluation_dir
DEMO_KEYS = [m.key for m in read_manifest(DEMO_MANIFEST).models]


def direct_ece(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE by hand: bins (k/n, (k+1)/n], the first also holds 0."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y_true
    total = 0.0
    for k in range(n_bins):
        low, high = k / n_bins, (k + 1) / n_bins
        inside = (confidence > low) & (confidence <= high) if k else (confidence <= high)
        if inside.any():
            total += inside.sum() / len(y_true) * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def stored(key: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    frame = evaluation.load_predictions(DEMO_ROOT, key, split)
    return frame["severity"].map(SEVERITIES.index).to_numpy(), frame[list(SEVERITY_COLUMNS)].to_numpy()


# ---- the fit --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature_the_labels_were_drawn_at(true_temperature):
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3.0, size=(20_000, 3))
    cumulative = softmax(logits / true_temperature).cumsum(axis=1)
    labels = (rng.random((len(logits), 1)) > cumulative).sum(axis=1)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    assert negative_log_likelihood(logits, labels, fitted) <= negative_log_likelihood(logits, labels, 1.0)


def test_fit_stays_in_bounds_and_needs_two_grades():
    logits = np.array([[10.0, 0.0, 0.0]] * 20)
    assert fit_temperature(logits, np.zeros(20, dtype=int)) == 1.0
    wrong = np.array([1] * 20)  # confidently wrong everywhere: as flat as allowed
    assert fit_temperature(logits, np.r_[wrong[:-1], 0]) == pytest.approx(TEMPERATURE_BOUNDS[1], rel=1e-3)


def test_temperature_scaling_keeps_every_grade():
    probs = softmax(np.random.default_rng(0).normal(scale=2.0, size=(200, 3)))
    for temperature in (0.3, 1.0, 4.0):
        scaled = temperature_scaled(probs, temperature)
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
        assert (scaled.argmax(axis=1) == probs.argmax(axis=1)).all()
    np.testing.assert_allclose(temperature_scaled(probs, 1.0), probs, atol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        temperature_scaled(probs, 0.0)


# ---- the committed demo set ------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", DEMO_KEYS)
def test_each_demo_temperature_is_the_fit_on_its_validation_predictions(key):
    config = json.loads((DEMO_MANIFEST.parent / key / "config.json").read_text())
    y_val, probs_val = stored(key, "val")
    # log p is the logits up to a per-row constant, so the stored raw probabilities give the same fit.
    refitted = fit_temperature(np.log(probs_val), y_val)
    assert config["temperature"] == pytest.approx(refitted, rel=1e-3)
    assert config["temperature"] != 1.0
    for split in ("val", "test"):
        document = evaluation.load_metrics(DEMO_ROOT, key, split).calibration
        assert document.calibrated.temperature == config["temperature"]


@pytest.mark.parametrize("split", ["val", "test"])
def test_stored_ece_and_reliability_match_a_direct_computation(split):
    calibrated = []
    for key in DEMO_KEYS:
        y_true, probs = stored(key, split)
        document = evaluation.load_metrics(DEMO_ROOT, key, split).calibration
        scaled = temperature_scaled(probs, document.calibrated.temperature)
        calibrated.append(scaled)
        assert document.ece == pytest.approx(direct_ece(y_true, probs), abs=1e-9)
        assert document.calibrated.ece == pytest.approx(direct_ece(y_true, scaled), abs=1e-5)
        curves = evaluation.load_curves(DEMO_ROOT, key, split)
        expected = metrics.reliability_curve(y_true, scaled)
        assert curves.reliability_calibrated.count == expected["count"]
        np.testing.assert_allclose(curves.reliability_calibrated.observed, expected["observed"])
    # The ensemble's calibrated view: its own temperature (fitted on validation) over the mean of its models'
    # calibrated probabilities, and that mean before it.
    y_true, _ = stored("ensemble", split)
    ensemble = evaluation.load_metrics(DEMO_ROOT, "ensemble", split).calibration.calibrated
    mean = np.mean(calibrated, axis=0)
    assert ensemble.base_ece == pytest.approx(direct_ece(y_true, mean), abs=1e-5)
    assert ensemble.ece == pytest.approx(direct_ece(y_true, temperature_scaled(mean, ensemble.temperature)), abs=1e-5)
    assert ensemble.log_loss == pytest.approx(log_loss(y_true, y_proba=temperature_scaled(mean, ensemble.temperature),
                                                       labels=[0, 1, 2]), abs=1e-6)


def test_the_ensemble_temperature_is_the_validation_fit_and_lowers_test_ece_and_log_loss():
    y_val, _ = stored("ensemble", "val")
    mean = np.mean([temperature_scaled(stored(key, "val")[1], evaluation.load_metrics(
        DEMO_ROOT, key, "val").calibration.calibrated.temperature) for key in DEMO_KEYS], axis=0)
    document = evaluation.load_metrics(DEMO_ROOT, "ensemble", "test").calibration.calibrated
    assert document.temperature == pytest.approx(fit_temperature(np.log(mean), y_val), rel=1e-3)
    assert document.ece < document.base_ece and document.log_loss < document.base_log_loss


def test_the_predictor_applies_the_stored_temperatures_only_when_asked():
    predictor, problem = ui.load_predictor(DEMO_MANIFEST)
    ensemble_temperature = evaluation.load_metrics(DEMO_ROOT, "ensemble", "val").calibration.calibrated.temperature
    assert problem is None and predictor.ensemble_temperature == ensemble_temperature != 1.0
    pixels = np.random.default_rng(5).random((96, 96)).astype(np.float32)
    raw, calibrated = predictor.predict(pixels), predictor.predict(pixels, calibrated=True)
    assert not raw.calibrated and calibrated.calibrated
    assert all(output.from_cache for output in calibrated.outputs)  # the switch costs only the heads
    for loaded, before, after in zip(predictor.models, raw.outputs, calibrated.outputs, strict=True):
        temperature = loaded.model.config.temperature
        np.testing.assert_allclose(after.probs, temperature_scaled(before.probs, temperature), atol=1e-5)
        assert (after.probs.argmax(axis=1) == before.probs.argmax(axis=1)).all()
    np.testing.assert_allclose(calibrated.ensemble, temperature_scaled(
        np.mean([o.probs for o in calibrated.outputs], axis=0), ensemble_temperature), atol=1e-9)
    np.testing.assert_allclose(raw.ensemble, np.mean([o.probs for o in raw.outputs], axis=0))
    assert calibrated.to_dict("L4/L5")["calibrated"] is True


def test_a_config_without_the_new_backbone_fields_still_loads(tmp_path):
    source = DEMO_MANIFEST.parent / DEMO_KEYS[0]
    config = json.loads((source / "config.json").read_text())
    for field in ("cam_layer", "cam_reshape", "cam_method"):
        config["backbone"].pop(field, None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes())
    model = SpineCADModel.load(tmp_path)
    assert model.config.temperature == config["temperature"] and model.backbone.cam_spec().cam_layer


def test_artefacts_written_before_calibration_still_validate(tmp_path):
    rng = np.random.default_rng(0)
    frame = evaluation.load_predictions(DEMO_ROOT, DEMO_KEYS[0], "test")
    evaluation.write_split_evaluation(tmp_path, "old", "test", frame, n_boot=5)
    evaluation.write_summary(tmp_path, [("old", "Old model")], ("test",))
    document = evaluation.load_metrics(tmp_path, "old", "test")
    assert document.calibration.calibrated is None
    assert evaluation.load_curves(tmp_path, "old", "test").reliability_calibrated is None
    evaluation.validate_tree(tmp_path)
    bad = rng.random((len(frame), 2))
    with pytest.raises(ValueError, match="calibrated_probs has shape"):
        evaluation.write_split_evaluation(tmp_path, "old", "test", frame, n_boot=5, calibrated_probs=bad)
