"""The paper profile end to end on the CPU: the six full-size backbones (random init, 224 px) train on a tiny
phantom for two epochs through both transfer phases, are evaluated, and the manifest they leave is served by the
app's predictor, through a launched app's /predict. Everything is written under a temporary folder and deleted
afterwards (paper-size weights are gigabytes and are never committed)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from spinecad.evaluation.store import load_summary, validate_tree
from spinecad.inference.manifest import read_manifest
from spinecad.labels import SEVERITIES
from spinecad.models.registry import PAPER_PROFILE
from tests.conftest import serving
from train.cli import main

# Six paper-size models on the CPU: minutes, more on a busy machine than the default 600 s timeout allows.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PAPER_KEYS = [spec.name for spec in PAPER_PROFILE]


@pytest.fixture
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper-profile")
    yield root
    shutil.rmtree(root, ignore_errors=True)  # ~10 GB of checkpoints and resume states


def test_paper_profile_trains_evaluates_and_answers_predict(workspace, upload_dir):
    from gradio_client import Client, handle_file

    from spinecad.imaging import read_slice
    from spinecad.inference.predictor import Predictor
    from train.phantom import write_phantom_dataset

    phantom, out = workspace / "phantom", workspace / "out"
    summary = write_phantom_dataset(phantom, n_studies=7, seed=5)  # the fewest a 65/15/20 split accepts
    code = main(["--data-dir", str(phantom), "--profile", "paper", "--no-pretrained", "--epochs", "2",
                 "--devices", "cpu", "--output-dir", str(out), "--cache-dir", str(workspace / "cache"),
                 "--n-boot", "20", "--no-progress"])
    assert code == 0

    manifest = read_manifest(out / "manifest.json")
    assert [entry.key for entry in manifest.models] == PAPER_KEYS and not manifest.demo
    validate_tree(out / "evaluation")
    assert [model.key for model in load_summary(out / "evaluation").models] == [*PAPER_KEYS, "ensemble"]
    for key in PAPER_KEYS:
        history = pd.read_csv(out / "evaluation" / key / "history.csv")
        assert list(history["phase"]) == ["frozen backbone", "last 32 layers unfrozen"]
        assert np.isfinite(history["train_loss"]).all()
        config = json.loads((out / key / "config.json").read_text())
        assert config["backbone"]["input_size"] == 224 and config["training"]["pretrained"] is False

    predictor = Predictor.from_manifest(out / "manifest.json", device="cpu")
    at_disc = summary.truth[summary.truth["level"] == "L4/L5"].iloc[0]
    dicom = phantom / "train_images" / str(at_disc.study_id) / str(at_disc.series_id) / f"{at_disc.instance_number}.dcm"
    prediction = predictor.predict(read_slice(dicom))
    assert [output.key for output in prediction.outputs] == PAPER_KEYS
    for output in prediction.outputs:
        assert np.allclose(output.probs.sum(axis=-1), 1.0, atol=1e-4)

    with serving(predictor, upload_dir) as url:
        client = Client(url, verbose=False)
        try:
            result = client.predict(handle_file(str(dicom)), "L4/L5", api_name="/predict")
        finally:
            client.close()
    assert len(result["models"]) == 6 and result["level"] == "L4/L5"
    for values in [*result["models"].values(), result["ensemble"]]:
        assert sum(values[grade] for grade in SEVERITIES) == pytest.approx(1.0, abs=1e-3)
