"""Paired patient-level bootstrap of model differences: seeded, paired, stored, and shown as a matrix."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from spinecad.evaluation import bootstrap, comparison
from spinecad.evaluation import store as evaluation
from spinecad.inference.manifest import read_manifest
from spinecad.labels import LEVELS, SEVERITIES, SEVERITY_COLUMNS, row_id
from tests.conftest import DEMO_MANIFEST

DEMO_ROOT = read_manifest(DEMO_MANIFEST).evaluation_dir


@pytest.fixture(scope="module")
def three_models():
    """Study ids, grades and three models' probabilities: two decent and one near chance."""
    rng = np.random.default_rng(11)
    studies = np.repeat(np.arange(40), 5)
    y_true = rng.choice(3, size=len(studies), p=[0.6, 0.25, 0.15])
    models = {}
    for name, skill in (("good", 2.5), ("fair", 1.5), ("chance", 0.0)):
        logits = rng.normal(size=(len(studies), 3)) + skill * np.eye(3)[y_true]
        models[name] = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return studies, y_true, models


def test_every_pair_equals_the_single_pair_computation(three_models):
    studies, y_true, models = three_models
    pairs = bootstrap.paired_bootstrap_differences(studies, y_true, models, n_boot=200, seed=3)
    assert [(p["metric"], p["a"], p["b"]) for p in pairs] == [
        (m, a, b) for m in ("macro_f1", "macro_roc_auc") for a, b in (("good", "fair"), ("good", "chance"),
                                                                        ("fair", "chance"))]
    for pair in pairs:
        single = bootstrap.paired_bootstrap_difference(studies, y_true, models[pair["a"]], models[pair["b"]],
                                                     metric=pair["metric"], n_boot=200, seed=3)
        for key in ("difference", "mean_difference", "low", "high", "n_valid", "p_value"):
            assert pair[key] == single[key]


def test_the_same_seed_gives_the_same_intervals_and_another_seed_others(three_models):
    studies, y_true, models = three_models
    first = bootstrap.paired_bootstrap_differences(studies, y_true, models, n_boot=300, seed=7)
    again = bootstrap.paired_bootstrap_differences(studies, y_true, models, n_boot=300, seed=7)
    other = bootstrap.paired_bootstrap_differences(studies, y_true, models, n_boot=300, seed=8)
    assert first == again
    assert [p["low"] for p in first] != [p["low"] for p in other]


def test_a_model_against_itself_gives_an_interval_around_zero(three_models):
    studies, y_true, models = three_models
    pairs = bootstrap.paired_bootstrap_differences(studies, y_true, {"good": models["good"], "copy": models["good"]},
                                                 n_boot=300, seed=0)
    for pair in pairs:
        assert pair["difference"] == 0.0 and pair["low"] <= 0.0 <= pair["high"]
        assert pair["p_value"] == 1.0


def test_a_model_near_chance_is_told_apart_from_a_good_one(three_models):
    studies, y_true, models = three_models
    pairs = bootstrap.paired_bootstrap_differences(studies, y_true, models, n_boot=500, seed=0)
    versus_chance = next(p for p in pairs if (p["a"], p["b"], p["metric"]) == ("good", "chance", "macro_roc_auc"))
    assert versus_chance["low"] > 0.1


def test_the_artefact_round_trips_and_is_part_of_the_tree(tmp_path, three_models):
    studies, y_true, models = three_models
    levels = np.tile(LEVELS, len(studies) // len(LEVELS))
    for key, probs in models.items():
        frame = pd.DataFrame({"row_id": [row_id(s, lv) for s, lv in zip(studies, levels, strict=True)],
                              "study_id": studies, "level": levels, "severity": [SEVERITIES[t] for t in y_true],
                              **{c: probs[:, k] for k, c in enumerate(SEVERITY_COLUMNS)}})
        evaluation.write_split_evaluation(tmp_path, key, "test", frame, n_boot=5)
    evaluation.write_summary(tmp_path, [(key, key.title()) for key in models], ("test",))
    written = evaluation.write_significance(tmp_path, "test", n_boot=100, seed=4)
    assert evaluation.load_significance(tmp_path) == written
    assert evaluation.significance_path(tmp_path) in evaluation.validate_tree(tmp_path)
    assert [pair.model_dump() for pair in written.pairs] == bootstrap.paired_bootstrap_differences(
        studies, y_true, models, n_boot=100, seed=4)
    # A pair naming a model the file does not list is refused.
    document = json.loads(evaluation.significance_path(tmp_path).read_text())
    document["pairs"][0]["a"] = "nobody"
    evaluation.significance_path(tmp_path).write_text(json.dumps(document))
    with pytest.raises(evaluation.ArtefactError, match=r"significance\.json.*nobody"):
        evaluation.validate_tree(tmp_path)


def test_the_demo_significance_is_reproducible_from_its_predictions(tmp_path):
    document = evaluation.load_significance(DEMO_ROOT)
    assert (document.split, document.n_boot, document.seed) == ("test", 1000, 0)
    keys = [m.key for m in evaluation.load_summary(DEMO_ROOT).models]
    assert [m.key for m in document.models] == keys
    assert len(document.pairs) == 2 * len(keys) * (len(keys) - 1) // 2
    copy = tmp_path / "evaluation"
    shutil.copytree(DEMO_ROOT, copy)
    assert evaluation.write_significance(copy, "test", n_boot=1000, seed=0).pairs == document.pairs


def test_the_matrix_mirrors_each_pair():
    keys = [m.key for m in evaluation.load_summary(DEMO_ROOT).models]
    matrices, facts = comparison.load_difference_matrices(DEMO_ROOT, keys)
    assert facts.n_boot == 1000 and [m.metric for m in matrices] == ["macro_f1", "macro_roc_auc"]
    for matrix in matrices:
        assert np.isnan(np.diag(matrix.difference)).all()
        off = ~np.eye(len(matrix.names), dtype=bool)
        np.testing.assert_allclose(matrix.difference[off], -matrix.difference.T[off])
        np.testing.assert_allclose(matrix.low[off], -matrix.high.T[off])
        assert (matrix.excludes_zero == matrix.excludes_zero.T).all()
