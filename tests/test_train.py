"""``python -m train`` end to end on a phantom set in the Kaggle layout: learnable, resumable, validated outputs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.torch

from spinecad.evaluation.store import load_metrics, load_significance, load_summary, validate_tree
from spinecad.inference.manifest import read_manifest
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def run_train(*args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "train", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    from train.phantom import write_phantom_dataset

    folder = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(folder, n_studies=60, seed=3)
    return folder


@pytest.fixture(scope="module")
def demo_run(phantom_dir, tmp_path_factory) -> Path:
    """A shortened ``--demo`` run on two fast backbones."""
    out = tmp_path_factory.mktemp("run")
    run_train("--demo", "--data-dir", str(phantom_dir), "--models", "beit_b,resnet152", "--epochs", "24",
              "--output-dir", str(out), "--cache-dir", str(out / "cache"), "--no-progress", "--n-boot", "200")
    return out


def test_demo_run_beats_the_majority_baseline(demo_run):
    summary = load_summary(demo_run / "evaluation")
    assert summary.demo and [m.key for m in summary.models] == ["beit_b-cpu", "resnet152-cpu", "ensemble"]
    test = load_metrics(demo_run / "evaluation", "ensemble", "test").metrics
    counts = np.array(list(test.class_counts.values()), dtype=float)
    majority_share = counts.max() / counts.sum()
    majority_macro_f1 = (2 * majority_share / (1 + majority_share)) / 3  # F1 of always answering the majority
    assert test.macro_f1 > majority_macro_f1 + 0.2, (test.macro_f1, majority_macro_f1)
    assert test.macro_roc_auc > 0.7


def test_outputs_are_complete_and_valid(demo_run):
    validate_tree(demo_run / "evaluation")
    manifest = read_manifest(demo_run / "manifest.json")
    assert manifest.demo and [e.key for e in manifest.models] == ["beit_b-cpu", "resnet152-cpu"]
    for entry in manifest.models:
        folder = demo_run / entry.path
        assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "familiarity.safetensors",
                                                            "model.safetensors"]
        card = (folder / "README.md").read_text()
        assert "## Metrics" in card and "validation macro-F1" in card and "synthetic phantoms" in card
        config = json.loads((folder / "config.json").read_text())
        assert config["training"]["selection"] == "validation macro-F1" and config["training"]["demo"] is True
        assert config["familiarity"]["threshold"] > 0 and config["familiarity"]["quantile"] == 0.99
        history = pd.read_csv(demo_run / "evaluation" / entry.key / "history.csv")
        assert len(history) == 24 and config["training"]["best_epoch"] == int(history["val_macro_f1"].idxmax()) + 1
        # The temperature fitted on validation is stored with the weights and reported beside the raw ECE.
        calibration = load_metrics(demo_run / "evaluation", entry.key, "test").calibration
        assert config["temperature"] == calibration.calibrated.temperature > 0
    significance = load_significance(demo_run / "evaluation")
    assert significance.split == "test" and significance.n_boot == 200
    assert len(significance.pairs) == 2 * 3  # two metrics, three pairs of beit, resnet and the ensemble
    split = pd.read_csv(demo_run / "split.csv")
    assert set(split["split"]) == {"train", "val", "test"} and split["study_id"].is_unique
    predictions = pd.read_csv(demo_run / "evaluation" / "ensemble" / "test" / "predictions.csv")
    assert predictions["row_id"].str.fullmatch(r"\d+_spinal_canal_stenosis_l\d_[ls]\d").all()
    test_studies = set(split.loc[split["split"] == "test", "study_id"])
    assert set(predictions["study_id"]) <= test_studies


def test_killed_run_resumes_to_identical_metrics(phantom_dir, tmp_path):
    common = ["--demo", "--data-dir", str(phantom_dir), "--models", "beit_b", "--epochs", "4", "--no-progress",
              "--n-boot", "50", "--cache-dir", str(tmp_path / "cache")]
    run_train(*common, "--output-dir", str(tmp_path / "whole"))

    interrupted = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "train", *common, "--output-dir", str(interrupted)],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    for line in process.stdout:  # kill it in the middle of the third epoch
        if "epoch 3/4" in line:
            process.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (interrupted / "manifest.json").exists()

    resumed = run_train(*common, "--output-dir", str(interrupted))
    # Killed during epoch 3 (or, on a fast machine, just after it): the rerun starts after the last saved epoch.
    assert re.search(r"resuming after epoch [23] of 4", resumed.stdout), resumed.stdout[-2000:]
    for split in ("val", "test"):
        whole = load_metrics(tmp_path / "whole" / "evaluation", "beit_b-cpu", split)
        again = load_metrics(interrupted / "evaluation", "beit_b-cpu", split)
        assert whole.metrics == again.metrics and whole.intervals == again.intervals
    weights_whole = safetensors.torch.load_file(tmp_path / "whole" / "beit_b-cpu" / "model.safetensors")
    weights_again = safetensors.torch.load_file(interrupted / "beit_b-cpu" / "model.safetensors")
    assert all((weights_whole[k] == weights_again[k]).all() for k in weights_whole)


def test_unreadable_dicom_is_skipped_and_named(phantom_dir, tmp_path):
    import shutil

    from train.rsna import build_sample_index

    broken = tmp_path / "data"
    shutil.copytree(phantom_dir, broken)
    index = build_sample_index(broken)
    victim = index.image_file(index.rows[index.rows["usable"]]["image_path"].iloc[0])
    victim.write_bytes(victim.read_bytes()[:300])  # a truncated upload from a crashed copy
    result = run_train("--demo", "--data-dir", str(broken), "--models", "vit_b16", "--epochs", "1",
                       "--no-progress", "--n-boot", "20", "--output-dir", str(tmp_path / "out"),
                       "--cache-dir", str(tmp_path / "cache"))
    assert f"skipping unreadable image {victim}" in result.stdout
    assert "'image could not be decoded': 1" in result.stdout
    assert (tmp_path / "out" / "manifest.json").exists()


def test_missing_csv_is_a_clear_error(phantom_dir, tmp_path):
    for name in ("train.csv", "train_series_descriptions.csv"):  # train_label_coordinates.csv is missing
        (tmp_path / name).write_bytes((phantom_dir / name).read_bytes())
    result = run_train("--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "out"), check=False)
    assert result.returncode == 2
    assert "train_label_coordinates.csv" in result.stderr and "Traceback" not in result.stderr


def test_index_split_and_score_subcommands_on_the_real_csvs(rsna_dir, tmp_path):
    index = run_train("index", "--data-dir", str(rsna_dir), "--output", str(tmp_path / "index.csv"))
    assert "subarticular_agree" in index.stdout and "Severe" in index.stdout
    assert len(pd.read_csv(tmp_path / "index.csv")) == 5 * len(pd.read_csv(rsna_dir / "train.csv"))
    split = run_train("split", "--data-dir", str(rsna_dir), "--output", str(tmp_path / "split.csv"))
    sizes = pd.read_csv(tmp_path / "split.csv")["split"].value_counts()
    assert abs(sizes["train"] - 1284) <= 1 and abs(sizes["val"] - 296) <= 1 and abs(sizes["test"] - 394) <= 1
    assert "train" in split.stdout

    labels = pd.read_csv(rsna_dir / "train.csv")
    rows = [f"{study}_spinal_canal_stenosis_l4_l5" for study in labels["study_id"]]
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=len(rows))
    frame = pd.DataFrame({"row_id": rows, "normal_mild": probs[:, 0], "moderate": probs[:, 1], "severe": probs[:, 2]})
    frame.to_csv(tmp_path / "predictions.csv", index=False)
    score = run_train("score", "--data-dir", str(rsna_dir), "--predictions", str(tmp_path / "predictions.csv"))
    result = json.loads(score.stdout)
    labelled = labels["spinal_canal_stenosis_l4_l5"].notna().sum()
    assert result["n"] == labelled
    for key in ("accuracy", "macro_f1", "weighted_f1", "macro_roc_auc", "macro_pr_auc"):
        assert 0 <= result[key] <= 1
    assert set(result["per_class"]) == {"Normal/Mild", "Moderate", "Severe"}
    assert abs(result["macro_roc_auc"] - 0.5) < 0.05  # random guesses


def test_pretrained_weights_offline_fail_with_a_clear_message(phantom_dir, tmp_path):
    result = run_train("--data-dir", str(phantom_dir), "--models", "resnet152", "--epochs", "1", "--no-progress",
                       "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Pretrained weights for resnet152.tv_in1k could not be loaded" in result.stderr
    assert "--no-pretrained" in result.stderr and "Traceback" not in result.stderr


def test_device_option_per_model():
    from spinecad.models.registry import profile
    from train.run import _devices

    specs = list(profile("cpu"))
    chosen = _devices("vit_b16=cpu,swin_b-cpu=meta", specs)
    assert str(chosen["vit_b16-cpu"]) == "cpu" and str(chosen["swin_b-cpu"]) == "meta"
    assert all(str(device) == "cpu" for device in _devices("cpu", specs).values())
