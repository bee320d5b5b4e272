"""The Kaggle notebook (notebooks/train_on_kaggle.ipynb) executed headless by papermill, as CI runs it: its
parameters cell pointed at a phantom folder, the CPU profile, one epoch, no install and no token. It must leave a
manifest the app's predictor loads, the folder a Space needs, and the Compare tab's figures inline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

NOTEBOOK = REPO / "notebooks" / "train_on_kaggle.ipynb"
PLOTLY = "application/vnd.plotly.v1+json"


def test_the_parameters_cell_is_tagged_for_papermill():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    tagged = [cell for cell in cells if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "DATA_DIR = \"/kaggle/input/rsna-2024-lumbar-spine-degenerative-classification\"" \
        in "".join(tagged[0]["source"])


def test_the_kaggle_notebook_runs_on_a_phantom_and_leaves_a_manifest_the_app_loads(tmp_path, monkeypatch):
    import papermill
    from ipykernel.kernelspec import install

    from spinecad.imaging import read_slice
    from spinecad.inference.predictor import Predictor
    from train.phantom import write_phantom_dataset

    # A kernel of this very interpreter, whatever other "python3" kernels the machine has.
    install(kernel_name="spinecad-test", prefix=str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    summary = write_phantom_dataset(tmp_path / "phantom", n_studies=7, seed=5)  # the fewest a split accepts
    work = tmp_path / "working"
    work.mkdir()

    executed = papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "executed.ipynb"), kernel_name="spinecad-test", cwd=str(work),
        progress_bar=False, parameters={"DATA_DIR": str(tmp_path / "phantom"), "WORK_DIR": str(work),
                                        "INSTALL": False, "PROFILE": "cpu", "EPOCHS": 1, "DEVICES": "cpu",
                                        "PRETRAINED": False, "HUB_ORG": "someone", "N_BOOT": 20})

    text = "".join(output.get("text", "") for cell in executed.cells for output in cell.get("outputs", []))
    assert "estimated total:" in text and "images found:" in text  # the dry run planned it first
    assert "No HF_TOKEN" in text and "push to the Hub: no" in text  # no secret: nothing is pushed
    assert "test split:" in text and "serve them: SPINECAD_MANIFEST=" in text
    figures = [output for cell in executed.cells for output in cell.get("outputs", [])
               if PLOTLY in output.get("data", {})]
    assert len(figures) == 6  # ROC, PR, reliability, confusion, training curves, paired differences

    space = work / "space"
    assert (space / "manifest.json").is_file() and (space / "evaluation" / "summary.json").is_file()
    predictor = Predictor.from_manifest(work / "spinecad-run" / "manifest.json", device="cpu")
    assert len(predictor.models) == 6
    at_disc = summary.truth.iloc[0]
    dicom = (tmp_path / "phantom" / "train_images" / str(at_disc.study_id) / str(at_disc.series_id)
             / f"{at_disc.instance_number}.dcm")
    prediction = predictor.predict(read_slice(dicom))
    assert len(prediction.outputs) == 6
    assert all(np.allclose(output.probs.sum(axis=-1), 1.0, atol=1e-4) for output in prediction.outputs)
