"""The committed demo set (``checkpoints/``): what a fresh clone serves offline must load, validate and work."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pytest
from pydicom.uid import JPEG2000Lossless

from spinecad.evaluation.store import load_summary, validate_tree
from spinecad.imaging import read_slice
from spinecad.inference.manifest import read_manifest
from spinecad.inference.predictor import Predictor
from spinecad.labels import SEVERITIES
from tests.conftest import DEMO_MANIFEST, REPO
from train.examples import IDENTITY, IMAGE_SIZE, LEVEL
from train.phantom import render_axial_scene, write_axial_dicom

CHECKPOINTS = DEMO_MANIFEST.parent
N_PER_GRADE = 60
# What a demo set fit for teaching must do on slices like its examples: chance is 1/3 for both.
MIN_BALANCED_ACCURACY = 0.8
MIN_RECALL = 0.5


@pytest.fixture(scope="module")
def predictor(demo_predictor) -> Predictor:
    return demo_predictor


def test_six_demo_models_load_from_the_repo(predictor):
    manifest = read_manifest(DEMO_MANIFEST)
    assert manifest.demo and "not for clinical use" in manifest.title
    assert not predictor.failures
    assert [m.name for m in predictor.models] == [
        "ViT-B/16", "Swin-B", "BEiT-B", "EfficientNetV2-M", "ResNet-152", "ConvNeXt-B"
    ]
    assert all(m.source.startswith("local:") for m in predictor.models)


def test_demo_evaluation_validates_and_lists_the_loaded_models(predictor):
    root = read_manifest(DEMO_MANIFEST).evaluation_dir
    validate_tree(root)
    summary = load_summary(root)
    assert summary.demo
    assert [m.key for m in summary.models] == [m.key for m in predictor.models] + ["ensemble"]


@pytest.fixture(scope="module")
def example_like_slices(tmp_path_factory) -> list[tuple[np.ndarray, str]]:
    """Fresh phantom slices written as the committed examples are (size, JPEG 2000, window), read as the app reads
    them, with their true grades: many more than the three example images, so a test on them measures the set."""
    folder = tmp_path_factory.mktemp("example-like")
    rng = np.random.default_rng(31)
    slices = []
    for k in range(N_PER_GRADE):
        for grade_id, grade in enumerate(SEVERITIES):
            pixels = render_axial_scene(grade_id, rng, IMAGE_SIZE).pixels
            path = write_axial_dicom(folder / f"{k}-{grade_id}.dcm", pixels, series=IDENTITY,
                                     transfer_syntax=JPEG2000Lossless)
            slices.append((read_slice(path).pixels, grade))
    return slices


def test_the_ensemble_grades_slices_like_the_examples_well(predictor, example_like_slices):
    hits = {grade: 0 for grade in SEVERITIES}
    for pixels, grade in example_like_slices:
        prediction = predictor.predict(pixels)
        hits[grade] += prediction.grade(prediction.ensemble, LEVEL) == grade
    recall = {grade: count / N_PER_GRADE for grade, count in hits.items()}
    balanced = sum(recall.values()) / len(recall)
    assert balanced >= MIN_BALANCED_ACCURACY and min(recall.values()) >= MIN_RECALL, (balanced, recall)


def test_each_committed_example_is_graded_the_same_as_dicom_and_as_png(predictor):
    examples = pd.read_csv(CHECKPOINTS / "examples" / "examples.csv")
    pairs = examples[examples["file"].str.endswith("_axial.dcm")]
    assert len(pairs) == len(SEVERITIES)
    for row in pairs.itertuples(index=False):
        from_dicom = predictor.predict(read_slice(CHECKPOINTS / "examples" / row.file))
        from_png = predictor.predict(read_slice(CHECKPOINTS / "examples" / row.file.replace(".dcm", ".png")))
        assert np.abs(from_dicom.ensemble - from_png.ensemble).max() < 0.02, row.file
        assert from_dicom.grade(from_dicom.ensemble, row.level) == from_png.grade(from_png.ensemble, row.level)


def test_the_committed_demo_set_stays_small():
    tracked = subprocess.run(["git", "ls-files", "-z", "checkpoints"], cwd=REPO, capture_output=True, check=True)
    files = [REPO / name for name in tracked.stdout.decode().split("\0") if name]
    if not files:
        pytest.skip("checkpoints/ is not committed in this checkout")
    assert sum(path.stat().st_size for path in files if path.exists()) < 15 * 2**20
