"""Evaluate trained checkpoints on validation and test, add the ensemble, write artefacts, cards and manifest.

Each model's temperature is fitted on its validation logits (``train.calibrate``) and saved in its config.json;
the artefacts hold the raw probabilities' metrics with the calibrated ECE and reliability beside them, and the
paired bootstrap of every two models on the test split (significance.json).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import softmax

from spinecad.atomic import remove_partials
from spinecad.evaluation.artefacts import EvaluatedModel, Metrics
from spinecad.evaluation.store import (
    ENSEMBLE_KEY,
    EVALUATED_SPLITS,
    mean_ensemble,
    write_significance,
    write_split_evaluation,
    write_summary,
)
from spinecad.inference.familiarity import fit_familiarity
from spinecad.inference.manifest import Manifest, ManifestEntry, write_manifest
from spinecad.inference.precision import Precision
from spinecad.inference.predictor import ENSEMBLE
from spinecad.labels import SEVERITY_COLUMNS, row_id
from spinecad.models.calibration import temperature_scaled
from spinecad.models.model import SpineCADModel
from spinecad.models.registry import PROFILES
from train.calibrate import ENSEMBLE_METHOD, METHOD, fit_temperature
from train.loop import feature_maps, predict_logits, save_checkpoint
from train.pipeline import PreparedData

SIGNIFICANCE_SPLIT = "test"
SIGNIFICANCE_SEED = 0


def predictions_frame(data: PreparedData, split: str, probs) -> pd.DataFrame:
    """Kaggle-style rows (row_id, study_id, level, true severity) with the three probabilities."""
    rows = data.rows[data.rows["split"] == split].reset_index(drop=True)
    frame = pd.DataFrame({
        "row_id": [row_id(study, level) for study, level in zip(rows["study_id"], rows["level"], strict=True)],
        "study_id": rows["study_id"].to_numpy(),
        "level": rows["level"].to_numpy(),
        "severity": rows["severity"].to_numpy(),
    })
    frame[list(SEVERITY_COLUMNS)] = probs
    return frame


def evaluate_run(
    output_dir: Path,
    data: PreparedData,
    *,
    device: torch.device,
    title: str,
    demo: bool,
    n_boot: int = 1000,
    exclude: Collection[str] = (),
    precision: Precision | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Metrics]]:
    """Score every checkpoint in ``output_dir`` but those in ``exclude`` (e.g. models whose training failed), and
    their mean; returns metrics by model key and split. ``precision`` defaults to the training one on ``device``.

    Re-running it gives the same files: the raw logits never depend on a temperature stored before.
    """
    root = output_dir / "evaluation"
    # Half-written files of a killed earlier run are never read (atomic writes); here they are also removed.
    for partial in root.rglob(".*.partial") if root.exists() else ():
        partial.unlink(missing_ok=True)
    remove_partials(output_dir / "manifest.json")
    models = [(key, model) for key, model in _checkpoints(output_dir) if key not in exclude]
    if not models:
        raise ValueError(f"No trained checkpoints in {output_dir} to evaluate.")
    raw: dict[str, list[pd.DataFrame]] = {split: [] for split in EVALUATED_SPLITS}
    calibrated: dict[str, list[np.ndarray]] = {split: [] for split in EVALUATED_SPLITS}
    results: dict[str, dict[str, Metrics]] = {}
    datasets = {split: data.dataset(split) for split in ("train", *EVALUATED_SPLITS)}
    val_labels = datasets["val"].labels.numpy()
    for key, model in models:
        model.to(device)
        logits = {split: predict_logits(model, datasets[split], device, precision=precision)[0]
                  for split in EVALUATED_SPLITS}
        model.config.temperature = round(fit_temperature(logits["val"], val_labels), 6)
        familiarity = fit_familiarity(feature_maps(model, datasets["train"], device, precision=precision),
                                      feature_maps(model, datasets["val"], device, precision=precision))
        model.config.familiarity = familiarity.config()
        results[key] = {}
        for split in EVALUATED_SPLITS:
            frame = predictions_frame(data, split, softmax(logits[split], axis=1))
            scaled = softmax(logits[split] / model.config.temperature, axis=1)
            raw[split].append(frame)
            calibrated[split].append(scaled)
            results[key][split] = write_split_evaluation(
                root, key, split, frame, n_boot=n_boot, calibrated_probs=scaled,
                temperature=model.config.temperature, calibration_method=METHOD).metrics
        # The card gets the metrics; config.json the temperature and the familiarity threshold.
        save_checkpoint(model.cpu(), output_dir / key, metrics=results[key], familiarity=familiarity)
        log(f"[{key}] test macro-F1 {results[key]['test'].macro_f1:.3f}, "
            f"accuracy {results[key]['test'].accuracy:.3f}, temperature {model.config.temperature:.3f}")
    # Averaging calibrated models leaves the mean under-confident: one more temperature, fitted on validation.
    mean_calibrated = {split: np.mean(calibrated[split], axis=0) for split in EVALUATED_SPLITS}
    ensemble_temperature = round(fit_temperature(np.log(np.clip(mean_calibrated["val"], 1e-12, None)), val_labels), 6)
    results[ENSEMBLE_KEY] = {
        split: write_split_evaluation(root, ENSEMBLE_KEY, split, mean_ensemble(raw[split]), n_boot=n_boot,
                                      calibrated_probs=temperature_scaled(mean_calibrated[split], ensemble_temperature),
                                      temperature=ensemble_temperature, calibration_method=ENSEMBLE_METHOD,
                                      base_calibrated_probs=mean_calibrated[split]).metrics
        for split in EVALUATED_SPLITS
    }
    log(f"[{ENSEMBLE_KEY}] temperature {ensemble_temperature:.3f} on the mean of the calibrated models")
    entries = [EvaluatedModel(key=key, display_name=model.display_name) for key, model in models]
    write_summary(root, [*entries, EvaluatedModel(key=ENSEMBLE_KEY, display_name=ENSEMBLE)], EVALUATED_SPLITS,
                  demo=demo,
                  description=title)
    write_significance(root, SIGNIFICANCE_SPLIT, n_boot=n_boot, seed=SIGNIFICANCE_SEED)
    manifest = Manifest(
        models=tuple(ManifestEntry(key=key, name=model.display_name, path=key) for key, model in models),
        title=title, demo=demo, evaluation="evaluation",
    )
    write_manifest(manifest, output_dir / "manifest.json")
    return results


def _checkpoints(output_dir: Path) -> list[tuple[str, SpineCADModel]]:
    """Every checkpoint folder in ``output_dir``, in the registry's order (paper order) where known."""
    order = [spec.name for profile_specs in PROFILES.values() for spec in profile_specs]
    found = []
    rank = {name: position for position, name in enumerate(order)}
    folders = sorted(output_dir.iterdir(), key=lambda f: (rank.get(f.name, len(order)), f.name))
    for folder in folders:
        if folder.is_dir() and not folder.name.startswith(".") and (folder / "config.json").exists():
            found.append((folder.name, SpineCADModel.load(folder)))
    return found
