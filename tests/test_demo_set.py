"""The committed demo set (``checkpoints/``): what a fresh clone serves offline must load, validate and work."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from spinecad.evaluation import load_summary, validate_tree
from spinecad.imaging import read_slice
from spinecad.manifest import DEFAULT_MANIFEST, read_manifest
from spinecad.predict import Predictor
from tests.conftest import REPO

CHECKPOINTS = DEFAULT_MANIFEST.parent


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_manifest(DEFAULT_MANIFEST, device="cpu")


def test_six_demo_models_load_from_the_repo(predictor):
    manifest = read_manifest(DEFAULT_MANIFEST)
    assert manifest.demo and "not for clinical use" in manifest.title
    assert not predictor.failures
    assert [m.name for m in predictor.models] == [
        "ViT-B/16", "Swin-B", "BEiT-B", "EfficientNetV2-M", "ResNet-152", "ConvNeXt-B"
    ]
    assert all(m.source.startswith("local:") for m in predictor.models)


def test_demo_evaluation_validates_and_lists_the_loaded_models(predictor):
    root = read_manifest(DEFAULT_MANIFEST).evaluation_dir
    validate_tree(root)
    summary = load_summary(root)
    assert summary.demo
    assert [m.key for m in summary.models] == [m.key for m in predictor.models] + ["ensemble"]


def test_the_ensemble_grades_the_committed_examples(predictor):
    examples = pd.read_csv(CHECKPOINTS / "examples" / "examples.csv")
    axial = examples[~examples["file"].str.contains("sagittal")]
    correct = 0
    for row in axial.itertuples(index=False):
        prediction = predictor.predict(read_slice(CHECKPOINTS / "examples" / row.file))
        correct += prediction.grade(prediction.ensemble, row.level) == row.true_grade
    assert correct >= len(axial) - 1, f"{correct} of {len(axial)} examples graded right"


def test_the_committed_demo_set_stays_small():
    tracked = subprocess.run(["git", "ls-files", "-z", "checkpoints"], cwd=REPO, capture_output=True, check=True)
    files = [REPO / name for name in tracked.stdout.decode().split("\0") if name]
    if not files:
        pytest.skip("checkpoints/ is not committed in this checkout")
    assert sum(path.stat().st_size for path in files if path.exists()) < 15 * 2**20
