"""Run a set of models on one slice or a series: every backbone once per slice, all five levels from its
features, plus the ensemble.

Features are cached per image, so switching the level (or asking for all levels) costs only the heads. A series
goes through each backbone in batches; each backbone runs in the precision its device and registry row allow.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spinecad.imaging import Slice
from spinecad.inference.devices import resolve_device
from spinecad.inference.familiarity import majority_unfamiliar
from spinecad.inference.loading import LoadedModel, LoadFailure, load_manifest_models
from spinecad.inference.manifest import Manifest, read_manifest
from spinecad.inference.precision import Precision, choose_precision
from spinecad.labels import LEVELS, SEVERITIES, level_index
from spinecad.logs import warn_once
from spinecad.models.calibration import temperature_scaled
from spinecad.models.preprocess import DataConfig, slice_to_tensor
from spinecad.models.registry import cpu_bf16_allowed

logger = logging.getLogger(__name__)

ENSEMBLE = "Ensemble (mean)"
# Slices per backbone call: a batch of 16 paper-size slices at 224 px holds a few hundred MB of activations
# (bench/predict.py prints the peak), and larger batches gain little per slice on 2 cores.
MAX_BATCH = 16


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
    precision: str = "fp32"  # what the backbone ran in: "fp32", "bf16" or "fp16" (spinecad.inference.precision)

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
                     "familiar": o.familiar, "familiarity": None if o.familiarity is None else round(o.familiarity, 4),
                     "precision": o.precision}
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
    """Holds loaded models on one device and predicts all of them on a slice, or on a series of slices."""

    def __init__(
        self,
        models: list[LoadedModel],
        failures: list[LoadFailure] | None = None,
        *,
        device: str | torch.device | None = None,
        manifest: Manifest | None = None,
        cache_size: int = 16,
        precision: str | None = None,
        batch_size: int = MAX_BATCH,
        ensemble_temperature: float = 1.0,
    ) -> None:
        self.models = models
        self.failures = failures or []
        self.manifest = manifest
        self.device = resolve_device(str(device) if device else None)
        self.cache_size = cache_size
        self.batch_size = _checked_batch_size(batch_size)
        # Per model: bf16/fp16 where the device runs it natively and (CPU) the backbone's row allows it, else fp32;
        # ``precision`` ("fp32", "bf16", "fp16") forces one, None leaves it to SPINECAD_PRECISION or the device.
        self.precisions: dict[str, Precision] = {
            loaded.key: choose_precision(self.device, forced=precision,
                                         backbone_bf16=cpu_bf16_allowed(loaded.model.config.backbone_spec))
            for loaded in models
        }
        # Rescales the mean of the calibrated models (fitted on validation with the evaluation artefacts).
        self.ensemble_temperature = ensemble_temperature
        # image key -> (pooled features by model, familiarity score by model)
        self._features: OrderedDict[str, tuple[dict[str, torch.Tensor], dict[str, float]]] = OrderedDict()
        self._lock = threading.Lock()  # the feature cache is shared by concurrent requests
        for loaded in models:
            loaded.model.eval().to(self.device)
            if self._channels_last(loaded):
                loaded.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_manifest(cls, path: str | Path, *, device: str | None = None, precision: str | None = None) -> Predictor:
        """Load every model a manifest lists (failures are kept in ``failures``)."""
        manifest = read_manifest(path)
        models, failures = load_manifest_models(manifest)
        return cls(models, failures, device=device, manifest=manifest, precision=precision)

    def predict(self, image: Slice | np.ndarray, *, calibrated: bool = False) -> Prediction:
        """Probabilities of every model for every level; backbones run only for an image not seen recently.

        ``calibrated`` divides each model's logits by its fitted temperature (config.json): the grades stay, the
        confidences change; switching costs only the heads.
        """
        return self.predict_series([image], calibrated=calibrated)[0]

    @torch.inference_mode()
    def predict_series(self, images: Sequence[Slice | np.ndarray], *, calibrated: bool = False,
                       progress: Callable[[int, int], None] | None = None,
                       batch_size: int | None = None) -> list[Prediction]:
        """One Prediction per image, in order: each backbone runs once per image not seen recently, in batches.

        ``batch_size`` (default: the predictor's) bounds how many slices one backbone call holds; ``progress(done,
        total)`` is called as slices complete. Results are kept in the bounded feature cache like ``predict``'s.
        """
        size = self.batch_size if batch_size is None else _checked_batch_size(batch_size)
        pixels = [image.pixels if isinstance(image, Slice) else np.asarray(image, dtype=np.float32)
                  for image in images]
        keys = [_image_key(p) for p in pixels]
        with self._lock:
            cached = {key: self._features[key] for key in keys if key in self._features}
            for key in cached:
                self._features.move_to_end(key)
        missing = list(dict.fromkeys(key for key in keys if key not in cached))  # each new image once
        first = {key: p for key, p in zip(keys, pixels, strict=True)}
        results: dict[str, tuple[dict[str, torch.Tensor], dict[str, float], dict[str, float]]] = {}
        total, done = len(keys), len(keys) - sum(1 for key in keys if key not in cached)
        if progress and done:
            progress(done, total)
        for start in range(0, len(missing), size):
            batch = missing[start:start + size]
            features, familiarity, latencies = self._run_backbones([first[key] for key in batch])
            with self._lock:
                for i, key in enumerate(batch):
                    entry = ({k: f[i].clone() for k, f in features.items()}, {k: f[i] for k, f in familiarity.items()})
                    results[key] = (*entry, latencies)
                    self._features[key] = entry
                while len(self._features) > self.cache_size:
                    self._features.popitem(last=False)
            if progress:
                done += sum(1 for key in keys if key in batch)
                progress(done, total)
        return self._predictions(keys, cached, results, calibrated)

    def _predictions(self, keys: list[str], cached: dict, results: dict, calibrated: bool) -> list[Prediction]:
        """The heads of every model over every image at once, then one Prediction per image."""
        if not keys:
            return []
        entries = [cached[key] + ({},) if key in cached else results[key] for key in keys]
        per_model = {}
        for loaded in self.models:
            start = time.perf_counter()
            features = torch.stack([entry[0][loaded.key] for entry in entries]).to(self.device)
            logits = loaded.model.head_all_levels(features).float()
            temperature = loaded.model.config.temperature if calibrated else 1.0
            per_model[loaded.key] = (torch.softmax(logits / temperature, dim=-1).cpu().numpy(),
                                     (time.perf_counter() - start) * 1000 / max(len(keys), 1))
        predictions = []
        for i, (key, (_, familiarity, latencies)) in enumerate(zip(keys, entries, strict=True)):
            outputs = [ModelOutput(
                loaded.key, loaded.name, per_model[loaded.key][0][i],
                latencies.get(loaded.key, 0.0) + per_model[loaded.key][1], from_cache=key in cached,
                familiarity=familiarity.get(loaded.key), precision=self.precisions[loaded.key].name,
            ) for loaded in self.models]
            ensemble = np.mean([o.probs for o in outputs], axis=0) if outputs else np.full((len(LEVELS), 3), np.nan)
            if calibrated and outputs and self.ensemble_temperature != 1.0:
                ensemble = temperature_scaled(ensemble, self.ensemble_temperature)
            predictions.append(Prediction(outputs, ensemble, device=str(self.device), calibrated=calibrated))
        return predictions

    def _run_backbones(self, pixels: list[np.ndarray]) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray],
                                                                dict[str, float]]:
        """Each model's pooled features (N, D), familiarity scores (N,) (models with statistics) and time per
        slice, one backbone call per model for the whole batch."""
        inputs: dict[DataConfig, torch.Tensor] = {}  # models that share a data config share one input batch
        features, familiarity, latencies = {}, {}, {}
        for loaded in self.models:
            start = time.perf_counter()
            config = loaded.model.data_config
            if config not in inputs:
                inputs[config] = torch.cat([slice_to_tensor(p, config) for p in pixels]).to(self.device)
            batch = inputs[config]
            if self._channels_last(loaded):
                batch = batch.contiguous(memory_format=torch.channels_last)
            with self.precisions[loaded.key].autocast(self.device):
                if loaded.familiarity is None:
                    features[loaded.key] = loaded.model.features(batch).float()
                else:
                    pooled, feature_map = loaded.model.backbone.features_with_map(batch)
                    features[loaded.key] = pooled.float()
                    try:
                        familiarity[loaded.key] = loaded.familiarity.scores(feature_map.float())
                    except (IndexError, RuntimeError) as error:  # statistics of another feature map: no flag
                        warn_once(logger, f"{loaded.name}: its familiarity statistics do not fit its feature map "
                                          f"({error}); it cannot flag unfamiliar images.")
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            latencies[loaded.key] = (time.perf_counter() - start) * 1000 / len(pixels)
        return features, {k: [float(v) for v in scores] for k, scores in familiarity.items()}, latencies

    def _channels_last(self, loaded: LoadedModel) -> bool:
        return loaded.model.config.backbone_spec.channels_last and self.device.type == "cuda"

    def clear_cache(self) -> None:
        with self._lock:
            self._features.clear()


def _checked_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive whole number of slices, not {batch_size!r}.")
    return batch_size


def _image_key(pixels: np.ndarray) -> str:
    digest = hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=16)
    digest.update(str(pixels.shape).encode())
    return digest.hexdigest()
