"""A stand-in for the committed demo set, and the real app started on it as a subprocess.

``write_fixture_set`` writes six randomly initialised CPU-profile models (with temperatures other than 1, so the
calibrated switch shows), a manifest and an evaluation tree of random (but grade-correlated) predictions with
calibration and significance, so the app tests never depend on the demo set being trained.

Most app tests share one in-process app (``tests/conftest.py``: ``launched_app``). ``running_app`` starts
``python app.py`` as a subprocess, for the tests where the process itself is the point: its log and its temporary
folder (test_privacy) and starting on broken checkpoints (test_checkpoint_faults).

    python -m tests.app_fixture /tmp/spinecad-fixture   # then SPINECAD_MANIFEST=/tmp/spinecad-fixture/manifest.json
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from spinecad.evaluation import store as evaluation
from spinecad.inference.familiarity import Familiarity, fit_familiarity
from spinecad.inference.manifest import Manifest, ManifestEntry, read_manifest, write_manifest
from spinecad.labels import LEVELS, SEVERITIES, SEVERITY_COLUMNS, row_id
from spinecad.models.calibration import temperature_scaled
from spinecad.models.model import HeadConfig, SpineCADModel
from spinecad.models.preprocess import slice_to_tensor
from spinecad.models.registry import CPU_PROFILE, CPU_SUFFIX
from train.phantom import render_axial_scene

REPO = Path(__file__).resolve().parents[1]
FIXTURE_TITLE = "Test fixture (random weights)"
MISSING_MODEL = "Seventh model (missing)"
# One per model, in CPU_PROFILE order: the fixture's "fitted" temperatures.
FIXTURE_TEMPERATURES = (1.5, 0.8, 2.0, 1.2, 0.9, 1.1)


def write_fixture_set(root: Path, *, n_studies: int = 24, n_boot: int = 50) -> Path:
    """Write models, manifest and evaluation under ``root`` (reused when already there); return the manifest path."""
    root = Path(root)
    if (root / "manifest.json").is_file():
        return root / "manifest.json"
    torch.manual_seed(0)
    entries = []
    for spec, temperature in zip(CPU_PROFILE, FIXTURE_TEMPERATURES, strict=True):
        key = spec.name.removesuffix(CPU_SUFFIX)
        model = SpineCADModel.build(spec.name, HeadConfig(level_dim=64, hidden_dims=(128, 64)),
                                     temperature=temperature).eval()
        familiarity = phantom_familiarity(model)
        model.config.familiarity = familiarity.config()
        model.save_pretrained(root / key)
        familiarity.save(root / key)
        entries.append(ManifestEntry(key=key, name=spec.display_name, path=key))
    write_fixture_evaluation(root / "evaluation", [(e.key, e.name) for e in entries], n_studies, n_boot)
    # Written last: its presence means the whole set is there.
    write_manifest(Manifest(tuple(entries), title=FIXTURE_TITLE, demo=True, evaluation="evaluation"),
                   root / "manifest.json")
    return root / "manifest.json"


def phantom_familiarity(model: SpineCADModel, n_per_grade: int = 24) -> Familiarity:
    """Familiarity statistics of a (random) model's features on phantom axial slices, as python -m train fits them
    on its training split, so that the fixture app tells a phantom from anything else."""
    rng = np.random.default_rng(11)
    pixels, labels = [], []
    for _ in range(n_per_grade):
        for grade in range(len(SEVERITIES)):
            scene = render_axial_scene(grade, rng, 128).pixels.astype(np.float32)
            pixels.append(np.clip(scene / np.percentile(scene, 99.5), 0, 1))  # about what the reader's window gives
            labels.append(grade)
    with torch.inference_mode():
        maps = torch.cat([model.backbone.features_with_map(slice_to_tensor(p, model.data_config))[1] for p in pixels])
    train = torch.arange(len(labels)) % 4 != 0
    return fit_familiarity([maps[train]], [maps[~train]])


def write_manifest_with_missing_model(root: Path) -> Path:
    """A second manifest beside ``write_fixture_set``'s: its six models plus one whose folder does not exist."""
    manifest = read_manifest(Path(root) / "manifest.json")
    missing = ManifestEntry(key="missing", name=MISSING_MODEL, path="missing")
    path = Path(root) / "manifest-with-missing-model.json"
    write_manifest(replace(manifest, models=(*manifest.models, missing)), path)
    return path


def write_fixture_evaluation(root: Path, models: list[tuple[str, str]], n_studies: int = 24, n_boot: int = 50) -> None:
    """An evaluation tree (format: spinecad.evaluation.store) of random predictions, better for later models, plus the
    ensemble, calibration at FIXTURE_TEMPERATURES, the test split's significance and a six-epoch history per model."""
    rng = np.random.default_rng(0)
    splits = {"val": 5_000_000, "test": 6_000_000}
    for split, first_study in splits.items():
        studies = np.repeat(first_study + np.arange(n_studies), len(LEVELS))
        levels = np.tile(LEVELS, n_studies)
        truth = rng.choice(len(SEVERITIES), size=len(studies), p=[0.6, 0.25, 0.15])
        frames, calibrated = [], []
        for skill, (key, _) in enumerate(models):
            logits = rng.normal(size=(len(studies), len(SEVERITIES))) + (1.0 + 0.3 * skill) * np.eye(3)[truth]
            probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            frame = pd.DataFrame({
                "row_id": [row_id(s, lv) for s, lv in zip(studies, levels, strict=True)],
                "study_id": studies, "level": levels, "severity": [SEVERITIES[t] for t in truth],
                **{column: probs[:, k] for k, column in enumerate(SEVERITY_COLUMNS)},
            })
            temperature = FIXTURE_TEMPERATURES[skill % len(FIXTURE_TEMPERATURES)]
            frames.append(frame)
            calibrated.append(temperature_scaled(probs, temperature))
            evaluation.write_split_evaluation(root, key, split, frame, n_boot=n_boot, calibrated_probs=calibrated[-1],
                                              temperature=temperature, calibration_method="fixture temperature")
        evaluation.write_split_evaluation(root, evaluation.ENSEMBLE_KEY, split, evaluation.mean_ensemble(frames),
                                          n_boot=n_boot, calibrated_probs=np.mean(calibrated, axis=0),
                                          calibration_method="mean of the calibrated models")
    for skill, (key, _) in enumerate(models):
        epochs = np.arange(1, 7)  # numbered from 1, as train/loop.py writes them
        evaluation.write_history(root, key, pd.DataFrame({
            "epoch": epochs, "phase": ["frozen backbone"] * 2 + ["last 32 layers unfrozen"] * 4,
            "train_loss": 1.1 * np.exp(-0.3 * (epochs - 1)), "train_accuracy": 0.5 + 0.07 * epochs,
            "train_macro_f1": 0.35 + 0.08 * epochs, "val_loss": 1.15 * np.exp(-0.2 * (epochs - 1)) + 0.02 * skill,
            "val_accuracy": 0.5 + 0.05 * epochs, "val_macro_f1": 0.3 + 0.06 * epochs - 0.01 * skill,
            "lr": 1e-4, "seconds": 3.0,
        }))
    evaluation.write_summary(root, [*models, (evaluation.ENSEMBLE_KEY, "Ensemble (mean)")], demo=True,
                             description="Random predictions for the app tests.")
    evaluation.write_significance(root, "test", n_boot=n_boot)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def app_environment(manifest: Path, temp_dir: Path, port: int) -> dict[str, str]:
    """The environment of an app subprocess: offline, local only, its own upload folder."""
    return {
        **os.environ,
        "SPINECAD_MANIFEST": str(manifest),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_TEMP_DIR": str(temp_dir),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


@contextlib.contextmanager
def running_app(manifest: Path, temp_dir: Path, log_path: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """Start ``python app.py`` and yield its URL once it answers; stop it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   env=app_environment(manifest, temp_dir, port))
        try:
            wait_until_answering(url, process, timeout_s, log_path)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_until_answering(url: str, process: subprocess.Popen, timeout_s: float, log_path: Path | None = None) -> None:
    """Poll ``url`` until it answers HTTP 200; fail with the app's log if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = log_path.read_text(errors="replace") if log_path else ""
            raise RuntimeError(f"app.py exited with code {process.returncode}:\n{log[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.1)
    raise TimeoutError(f"app.py did not answer at {url} within {timeout_s} s")


if __name__ == "__main__":
    print(write_fixture_set(Path(sys.argv[1])))
