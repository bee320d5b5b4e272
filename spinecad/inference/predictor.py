"""Run a set of models on one slice: every backbone once, all five levels from its features, plus the ensemble.

Features are cached per image, so switching the level (or asking for all levels) costs only the heads.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spinecad.imaging import Slice
from spinecad.inference.devices import autocast, resolve_device
from spinecad.inference.familiarity import majority_unfamiliar
from spinecad.inference.loading import LoadedModel, LoadFailure, load_manifest_models
from spinecad.inference.manifest import Manifest, read_manifest
from spinecad.labels import LEVELS, SEVERITIES, level_index
from spinecad.logs import warn_once
from spinecad.models.calibration import temperature_scaled
from spinecad.models.preprocess import DataConfig, slice_to_tensor

logger = logging.getLogger(__name__)

ENSEMBLE = "Ensemble (mean)"


@dataclass
class ModelOutput:
    """One model's probabilities for all levels (L, 3) and the time its share of the work took."""

    key: str
    name: str
    probs: np.ndarray
    latency_ms: float
    from_cache: bool
    # Distance from the model's training images in units of its threshold (<= 1: familiar); None: no statistics.
    familiarity: float | None = None

    @property
    def familiar(self) -> bool | None:
        """Whether the model has seen images like this one (None when its checkpoint cannot tell)."""
        return None if self.familiarity is None else bool(self.familiarity <= 1.0)


@dataclass
class Prediction:
    """All models' probabilities for every level of one slice, and their mean (the ensemble)."""

    outputs: list[ModelOutput]
    ensemble: np.ndarray  # (L, 3)
    device: str
    level_names: tuple[str, ...] = LEVELS
    class_names: tuple[str, ...] = SEVERITIES
    calibrated: bool = False  # each model at its fitted temperature, the ensemble's mean at the ensemble's

    @property
    def unfamiliar(self) -> bool | None:
        """Most models that can tell have not seen images like this one (None when no model can tell)."""
        return majority_unfamiliar([None if o.familiar is None else not o.familiar for o in self.outputs])

    def split(self, level: str | int) -> bool:
        """No grade is given by a majority of the models at ``level``."""
        votes = np.bincount([int(np.argmax(o.probs[self._level(level)])) for o in self.outputs],
                            minlength=len(self.class_names))
        return bool(self.outputs) and int(votes.max()) * 2 <= len(self.outputs)

    def grade(self, probs: np.ndarray, level: str | int) -> str:
        return self.class_names[int(np.argmax(probs[self._level(level)]))]

    def agreement(self, level: str | int) -> float:
        """Share of models whose grade equals the ensemble's grade at ``level``."""
        ensemble_grade = self.grade(self.ensemble, level)
        votes = [self.grade(output.probs, level) == ensemble_grade for output in self.outputs]
        return float(np.mean(votes)) if votes else 0.0

    def to_dict(self, level: str | int) -> dict:
        """The JSON shape of the app's ``predict`` API for one level."""
        index = self._level(level)

        def row(probs: np.ndarray) -> dict:
            values = {name: round(float(p), 6) for name, p in zip(self.class_names, probs[index], strict=True)}
            values["grade"] = self.grade(probs, index)
            return values

        models = {
            o.name: {**row(o.probs), "latency_ms": round(o.latency_ms, 2), "from_cache": o.from_cache,
                     "familiar": o.familiar, "familiarity": None if o.familiarity is None else round(o.familiarity, 4)}
            for o in self.outputs
        }
        return {
            "level": self.level_names[index],
            "models": models,
            "ensemble": {**row(self.ensemble), "agreement": round(self.agreement(index), 4)},
            "all_levels": {
                **{o.name: {lv: self.grade(o.probs, i) for i, lv in enumerate(self.level_names)} for o in self.outputs},
                ENSEMBLE: {lv: self.grade(self.ensemble, i) for i, lv in enumerate(self.level_names)},
            },
            "device": self.device,
            "calibrated": self.calibrated,
            "unfamiliar": self.unfamiliar,
            "models_split": self.split(index),
        }

    def _level(self, level: str | int) -> int:
        return level if isinstance(level, int) else level_index(level)


class Predictor:
    """Holds loaded models on one device and predicts all of them on a slice."""

    def __init__(
        self,
        models: list[LoadedModel],
        failures: list[LoadFailure] | None = None,
        *,
        device: str | torch.device | None = None,
        manifest: Manifest | None = None,
        cache_size: int = 16,
        bf16: bool = True,
        ensemble_temperature: float = 1.0,
    ) -> None:
        self.models = models
        self.failures = failures or []
        self.manifest = manifest
        self.device = resolve_device(str(device) if device else None)
        self.cache_size = cache_size
        self.bf16 = bf16  # bf16 autocast on CUDA; the CPU always runs fp32
        # Rescales the mean of the calibrated models (fitted on validation with the evaluation artefacts).
        self.ensemble_temperature = ensemble_temperature
        # image key -> (pooled features by model, familiarity score by model)
        self._features: OrderedDict[str, tuple[dict[str, torch.Tensor], dict[str, float]]] = OrderedDict()
        self._lock = threading.Lock()  # the feature cache is shared by concurrent requests
        for loaded in models:
            loaded.model.eval().to(self.device)
            if self.device.type == "cuda" and loaded.model.config.backbone_spec.channels_last:
                loaded.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_manifest(cls, path: str | Path, *, device: str | None = None) -> Predictor:
        """Load every model a manifest lists (failures are kept in ``failures``)."""
        manifest = read_manifest(path)
        models, failures = load_manifest_models(manifest)
        return cls(models, failures, device=device, manifest=manifest)

    @torch.inference_mode()
    def predict(self, image: Slice | np.ndarray, *, calibrated: bool = False) -> Prediction:
        """Probabilities of every model for every level; backbones run only for an image not seen recently.

        ``calibrated`` divides each model's logits by its fitted temperature (config.json): the grades stay, the
        confidences change; switching costs only the heads.
        """
        pixels = image.pixels if isinstance(image, Slice) else np.asarray(image, dtype=np.float32)
        key = _image_key(pixels)
        with self._lock:
            cached = self._features.get(key)
            if cached is not None:
                self._features.move_to_end(key)
        features, familiarity = cached if cached is not None else ({}, {})
        latencies: dict[str, float] = {}
        if cached is None:
            features, familiarity, latencies = self._run_backbones(pixels)
            with self._lock:
                self._features[key] = (features, familiarity)
                while len(self._features) > self.cache_size:
                    self._features.popitem(last=False)

        outputs = []
        for loaded in self.models:
            start = time.perf_counter()
            logits = loaded.model.head_all_levels(features[loaded.key].to(self.device))[0].float()
            temperature = loaded.model.config.temperature if calibrated else 1.0
            probs = torch.softmax(logits / temperature, dim=-1).cpu().numpy()
            head_ms = (time.perf_counter() - start) * 1000
            outputs.append(ModelOutput(
                loaded.key, loaded.name, probs, latencies.get(loaded.key, 0.0) + head_ms, from_cache=cached is not None,
                familiarity=familiarity.get(loaded.key),
            ))
        ensemble = np.mean([o.probs for o in outputs], axis=0) if outputs else np.full((len(LEVELS), 3), np.nan)
        if calibrated and outputs and self.ensemble_temperature != 1.0:
            ensemble = temperature_scaled(ensemble, self.ensemble_temperature)
        return Prediction(outputs, ensemble, device=str(self.device), calibrated=calibrated)

    def _run_backbones(self, pixels: np.ndarray) -> tuple[dict[str, torch.Tensor], dict[str, float],
                                                          dict[str, float]]:
        """Each model's pooled features, familiarity score (models with statistics) and time, one pass each."""
        inputs: dict[DataConfig, torch.Tensor] = {}  # models that share a data config share one input tensor
        features, familiarity, latencies = {}, {}, {}
        for loaded in self.models:
            start = time.perf_counter()
            config = loaded.model.data_config
            if config not in inputs:
                inputs[config] = slice_to_tensor(pixels, config).to(self.device)
            batch = inputs[config]
            if self.device.type == "cuda" and loaded.model.config.backbone_spec.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, bf16=self.bf16):
                if loaded.familiarity is None:
                    features[loaded.key] = loaded.model.features(batch).float()
                else:
                    pooled, feature_map = loaded.model.backbone.features_with_map(batch)
                    features[loaded.key] = pooled.float()
                    try:
                        familiarity[loaded.key] = float(loaded.familiarity.scores(feature_map.float())[0])
                    except (IndexError, RuntimeError) as error:  # statistics of another feature map: no flag
                        warn_once(logger, f"{loaded.name}: its familiarity statistics do not fit its feature map "
                                          f"({error}); it cannot flag unfamiliar images.")
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            latencies[loaded.key] = (time.perf_counter() - start) * 1000
        return features, familiarity, latencies

    def clear_cache(self) -> None:
        with self._lock:
            self._features.clear()


def _image_key(pixels: np.ndarray) -> str:
    digest = hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=16)
    digest.update(str(pixels.shape).encode())
    return digest.hexdigest()
