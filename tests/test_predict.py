"""The multi-model predictor: one backbone pass per image, cached level switches, manifest loading and failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spinecad.inference.loading import LoadedModel
from spinecad.inference.manifest import ManifestError, read_manifest
from spinecad.inference.precision import choose_precision
from spinecad.inference.predictor import ENSEMBLE, Predictor
from spinecad.labels import LEVELS
from spinecad.models.preprocess import slice_to_tensor
from spinecad.models.registry import cpu_bf16_allowed


def _loaded(models) -> list[LoadedModel]:
    return [LoadedModel(m.config.backbone["name"], m.display_name, m, "memory") for m in models]


@pytest.fixture()
def predictor(cpu_models) -> Predictor:
    return Predictor(_loaded(cpu_models), device="cpu", precision="fp32")


@pytest.fixture()
def image() -> np.ndarray:
    return np.random.default_rng(3).random((200, 180)).astype(np.float32)


class _CountingForward:
    """Counts backbone passes by wrapping the real ``features`` method (the model still runs)."""

    def __init__(self, models):
        self.calls = 0
        for model in models:
            original = model.backbone.features

            def counted(images, _original=original):
                self.calls += 1
                return _original(images)

            model.backbone.features = counted

    def restore(self, models):
        for model in models:
            del model.backbone.features


def test_level_switch_uses_cached_features_and_equals_a_full_forward(predictor, cpu_models, image):
    counter = _CountingForward(cpu_models)
    try:
        first = predictor.predict(image)
        assert counter.calls == 6
        again = predictor.predict(image)
        assert counter.calls == 6  # the second call ran no backbone
    finally:
        counter.restore(cpu_models)
    assert all(o.from_cache for o in again.outputs) and not any(o.from_cache for o in first.outputs)
    for model, output in zip(cpu_models, again.outputs, strict=True):
        batch = slice_to_tensor(image, model.data_config).repeat(len(LEVELS), 1, 1, 1)  # the slice once per level
        with torch.no_grad():  # one full forward (backbone and head) of every level
            probs = torch.softmax(model(batch, torch.arange(len(LEVELS))), dim=-1).numpy()
        np.testing.assert_allclose(output.probs, probs, atol=1e-5)


def test_a_series_equals_one_prediction_per_slice_and_runs_each_backbone_once_per_slice(predictor, cpu_models):
    rng = np.random.default_rng(5)
    series = [rng.random((200, 180)).astype(np.float32) for _ in range(5)]
    singles = [predictor.predict(pixels) for pixels in series]
    predictor.clear_cache()
    counter, calls = _CountingForward(cpu_models), []
    try:
        batched = predictor.predict_series(series, batch_size=2, progress=lambda *counts: calls.append(counts))
        assert counter.calls == 6 * 3  # batches of 2, 2 and 1
        again = predictor.predict_series(series)
        assert counter.calls == 6 * 3  # all five from the cache
    finally:
        counter.restore(cpu_models)
    assert calls == [(2, 5), (4, 5), (5, 5)]
    for single, one, cached in zip(singles, batched, again, strict=True):
        for a, b, c in zip(single.outputs, one.outputs, cached.outputs, strict=True):
            np.testing.assert_allclose(b.probs, a.probs, atol=1e-5)
            np.testing.assert_array_equal(c.probs, b.probs)
            assert c.from_cache and not b.from_cache and b.latency_ms > 0
        np.testing.assert_allclose(one.ensemble, single.ensemble, atol=1e-5)


def test_a_series_with_repeats_and_cached_slices_keeps_its_order(predictor, image):
    other = np.random.default_rng(9).random((64, 64)).astype(np.float32)
    predictor.predict(image)
    calls = []
    results = predictor.predict_series([other, image, other], progress=lambda d, t: calls.append((d, t)))
    assert [r.outputs[0].from_cache for r in results] == [False, True, False]
    np.testing.assert_array_equal(results[0].ensemble, results[2].ensemble)
    np.testing.assert_allclose(results[1].ensemble, predictor.predict(image).ensemble, atol=1e-6)
    assert calls == [(1, 3), (3, 3)]
    assert predictor.predict_series([]) == []


def test_the_feature_cache_stays_bounded_through_a_long_series(cpu_models):
    predictor = Predictor(_loaded(cpu_models[:1]), device="cpu", cache_size=4, batch_size=3)
    series = [np.full((32, 32), v, dtype=np.float32) for v in np.linspace(0, 1, 10)]
    predictor.predict_series(series)
    assert len(predictor._features) == 4
    assert predictor.predict(series[-1]).outputs[0].from_cache
    assert not predictor.predict(series[0]).outputs[0].from_cache


@pytest.mark.parametrize("size", [0, -1, 2.5])
def test_a_bad_batch_size_is_refused(predictor, image, size):
    with pytest.raises(ValueError, match="batch_size"):
        predictor.predict_series([image], batch_size=size)


def test_bf16_on_the_cpu_stays_within_the_agreement_bound(cpu_models, image):
    fp32 = Predictor(_loaded(cpu_models), device="cpu", precision="fp32").predict(image)
    bf16 = Predictor(_loaded(cpu_models), device="cpu", precision="bf16").predict(image)
    assert {o.precision for o in bf16.outputs} == {"bf16"} and {o.precision for o in fp32.outputs} == {"fp32"}
    for a, b in zip(fp32.outputs, bf16.outputs, strict=True):
        assert np.abs(a.probs - b.probs).max() <= 0.02, a.name
    assert {v["precision"] for v in bf16.to_dict("L4/L5")["models"].values()} == {"bf16"}


def test_each_model_runs_in_the_precision_its_row_and_the_cpu_allow(monkeypatch, cpu_models):
    monkeypatch.delenv("SPINECAD_PRECISION", raising=False)
    auto = Predictor(_loaded(cpu_models), device="cpu")
    for model in cpu_models:
        expected = choose_precision("cpu", backbone_bf16=cpu_bf16_allowed(model.config.backbone_spec)).name
        assert auto.precisions[model.config.backbone["name"]].name == expected
    monkeypatch.setenv("SPINECAD_PRECISION", "fp32")
    assert {p.name for p in Predictor(_loaded(cpu_models), device="cpu").precisions.values()} == {"fp32"}


def test_ensemble_agreement_and_json_shape(predictor, image):
    prediction = predictor.predict(image)
    stacked = np.stack([o.probs for o in prediction.outputs])
    np.testing.assert_allclose(prediction.ensemble, stacked.mean(axis=0), atol=1e-7)
    payload = prediction.to_dict("L4/L5")
    assert payload["level"] == "L4/L5" and len(payload["models"]) == 6
    for values in payload["models"].values():
        assert abs(values["Normal/Mild"] + values["Moderate"] + values["Severe"] - 1) < 1e-4
        assert values["grade"] in ("Normal/Mild", "Moderate", "Severe") and values["latency_ms"] > 0
        assert values["precision"] == "fp32"
    assert set(payload["all_levels"]) == {*payload["models"], ENSEMBLE}
    assert all(set(grades) == set(LEVELS) for grades in payload["all_levels"].values())
    grades = [v["grade"] for v in payload["models"].values()]
    assert payload["ensemble"]["agreement"] == pytest.approx(grades.count(payload["ensemble"]["grade"]) / 6, abs=1e-3)
    json.dumps(payload)


def _write_demo_manifest(folder: Path, models, extra_entries=()) -> Path:
    entries = []
    for model in models:
        key = model.config.backbone["name"]
        model.save_pretrained(folder / key)
        entries.append({"key": key, "name": model.display_name, "path": key})
    manifest = {"format": "spinecad-manifest/1", "title": "test", "demo": True, "models": entries + list(extra_entries)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "manifest.json"


def test_from_manifest_serves_the_rest_when_one_fails(tmp_path, cpu_models, image):
    """(A Hub entry the offline cache cannot serve: test_model; the app's banner of a failure: test_app.)"""
    broken = {"key": "broken", "name": "Broken", "path": "nowhere"}
    path = _write_demo_manifest(tmp_path, cpu_models[:2], [broken])
    predictor = Predictor.from_manifest(path, device="cpu")
    assert [m.name for m in predictor.models] == [cpu_models[0].display_name, cpu_models[1].display_name]
    assert [(f.key, f.name) for f in predictor.failures] == [("broken", "Broken")]
    assert predictor.failures[0].reason == f"Broken: no checkpoint folder at {tmp_path / 'nowhere'}."
    assert predictor.manifest.title == "test" and predictor.manifest.demo is True
    assert len(predictor.predict(image).outputs) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        (json.dumps({"format": "other"}), "format"),
        (json.dumps({"format": "spinecad-manifest/1", "models": [{"key": "a", "name": "A"}]}), "needs a local"),
        (json.dumps({"format": "spinecad-manifest/1", "models": [{"key": "a", "name": "A", "repo_id": "o/r"}]}),
         "pinned"),
    ],
)
def test_bad_manifests_are_refused_with_a_message(tmp_path, content, message):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path / "manifest.json")
