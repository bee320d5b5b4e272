"""Train one model: the recipe's phases, class-weighted cross-entropy, best epoch by validation macro-F1.

One plain function. After every epoch the best checkpoint (Hub format) and the resume state are replaced
atomically, so a run killed at any point restarts from its last finished epoch and ends with the same result.
The precision is the library's choice for the device (``choose_precision``): fp16 trains with a
``torch.amp.GradScaler`` whose state goes into the resume state. Under torchrun the same function trains one
model data-parallel (``train.distributed``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax
from sklearn.metrics import accuracy_score, f1_score
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from spinecad.atomic import recover_directory, replace_directory
from spinecad.evaluation.store import write_history
from spinecad.inference.familiarity import Familiarity
from spinecad.inference.precision import Precision, choose_precision
from spinecad.labels import SEVERITIES
from spinecad.models.localizer import LocalizerModel
from spinecad.models.model import ModelConfig, SpineCADModel
from spinecad.models.registry import BackboneSpec
from train import distributed
from train.augment import augment_batch
from train.data import SliceDataset, batches, model_batch
from train.recipe import Phase, Recipe
from train.state import ResumeState, load_state, save_state


@dataclass
class TrainingData:
    """The train and validation samples, and facts about the dataset for the model card."""

    train: SliceDataset
    val: SliceDataset
    facts: dict  # e.g. {"dataset": "phantom", "n_train": ..., "n_val": ...}
    fingerprint: str  # changes whenever the samples or their labels change


@dataclass
class TrainOutcome:
    """Where the best checkpoint is and how training went."""

    key: str
    checkpoint_dir: Path
    history: list[dict]
    best_epoch: int  # 1-based
    best_score: float
    resumed_from_epoch: int  # 0 = fresh start


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Inverse-frequency ("balanced") weights over the three grades; a grade absent from training gets 1."""
    present = np.unique(labels)
    weights = np.ones(len(SEVERITIES), dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(weights)


def set_trainable(model: SpineCADModel, phase: Phase) -> None:
    """Freeze the backbone except its last ``phase.backbone_layers`` layers; the head and embedding always train."""
    groups = model.backbone.layer_groups()
    count = len(groups) if phase.backbone_layers is None else min(phase.backbone_layers, len(groups))
    for index, group in enumerate(groups):
        for parameter in group:
            parameter.requires_grad_(index >= len(groups) - count)
    for module in (model.level_embedding, model.classifier):
        module.requires_grad_(True)


def train_model(
    spec: BackboneSpec,
    recipe: Recipe,
    data: TrainingData,
    output_dir: Path,
    *,
    device: torch.device,
    precision: Precision | None = None,
    ranks: distributed.Ranks | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainOutcome:
    """Train ``spec`` with ``recipe``; the best epoch's model is saved to ``output_dir/<spec.name>``.

    ``precision`` defaults to the library's training choice for ``device``; ``ranks`` (under torchrun) makes this
    one rank of a data-parallel run, and only rank 0 writes or logs.
    """
    precision = precision or choose_precision(device, training=True)
    writer = ranks is None or ranks.writer
    log = log if writer else _silent
    checkpoint_dir = output_dir / spec.name
    state_path = output_dir / ".state" / f"{spec.name}.safetensors"
    if writer:
        recover_directory(checkpoint_dir)
    use_deterministic_kernels(device)
    torch.manual_seed(recipe.seed)  # seeds the CPU and every CUDA device
    config = ModelConfig(backbone=spec.to_dict(), head=recipe.head)
    model = SpineCADModel(config)
    if recipe.pretrained:
        model.backbone.load_pretrained_weights()
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.grad_scaler)
    weights = class_weights(data.train.labels.numpy()) if recipe.class_weighted_loss else torch.ones(3)
    criterion = nn.CrossEntropyLoss(weight=weights.to(device))
    shuffler = torch.Generator().manual_seed(recipe.seed)
    fingerprint = _fingerprint(spec, recipe, data, precision, ranks)

    resumed = load_state(state_path, model=model, optimizer=optimizer, fingerprint=fingerprint, scaler=scaler,
                         writer=writer)
    if resumed is None:
        state = ResumeState(next_epoch=0, history=[], best_score=-math.inf, best_epoch=0)
    else:
        state, rng = resumed
        _restore_rng(rng, device, shuffler)
        log(f"[{spec.name}] resuming after epoch {state.next_epoch} of {recipe.epochs}")
    resumed_from = state.next_epoch
    if precision.name != "fp32":
        log(f"[{spec.name}] {precision.name} autocast on {device}" + (" with loss scaling" * precision.grad_scaler))

    wrapped, wrapped_phase = None, None
    for epoch in range(state.next_epoch, recipe.epochs):
        phase = recipe.phase_at(epoch)
        set_trainable(model, phase)
        started = time.perf_counter()
        log(f"[{spec.name}] epoch {epoch + 1}/{recipe.epochs} ({phase.name})")
        label = f"{spec.name} {epoch + 1}/{recipe.epochs}"
        step = _Step(optimizer, scaler, precision, device)
        if ranks is None:
            train_stats = _train_epoch(model, data.train, recipe, criterion, shuffler, step, progress, label)
        else:
            if phase != wrapped_phase:  # DDP syncs the parameters that required gradients when it was built
                wrapped, wrapped_phase = None, phase
                wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            distributed.seed_epoch(recipe.seed, epoch, ranks)
            train_stats = _train_epoch_ranks(wrapped, model, data.train, recipe, weights.to(device), epoch, ranks,
                                             step, progress and writer, label)
        val_probs, val_loss = predict_probs(model, data.val, device, criterion=criterion, precision=precision)
        val_true = data.val.labels.numpy()
        val_pred = val_probs.argmax(axis=1)
        row = {
            "epoch": epoch + 1, "phase": phase.name, **train_stats,
            "val_loss": val_loss, "val_accuracy": float(accuracy_score(val_true, val_pred)),
            "val_macro_f1": float(f1_score(val_true, val_pred, average="macro", labels=[0, 1, 2], zero_division=0)),
            "lr": recipe.lr, "seconds": round(time.perf_counter() - started, 3),
        }
        state.history.append(row)
        improved = row["val_macro_f1"] > state.best_score
        if improved:
            state.best_score, state.best_epoch = row["val_macro_f1"], epoch + 1
            model.config.training = _training_facts(recipe, data, state, precision)
        state.next_epoch = epoch + 1
        if writer:
            if improved:
                save_checkpoint(model, checkpoint_dir)
            write_history(output_dir / "evaluation", spec.name, _history_for_file(state.history))
            save_state(state_path, model=model, optimizer=optimizer, state=state, fingerprint=fingerprint,
                       rng=_rng_state(device, shuffler), scaler=scaler)
        shared = f" | {len(data.train)} samples, each read once by one of {ranks.world_size} ranks" if ranks else ""
        log(f"[{spec.name}] epoch {epoch + 1}: train loss {row['train_loss']:.3f} F1 {row['train_macro_f1']:.3f} | "
            f"val loss {val_loss:.3f} acc {row['val_accuracy']:.3f} F1 {row['val_macro_f1']:.3f} | "
            f"{row['seconds']:.1f} s{shared}")
    distributed.barrier()  # the other ranks leave only once rank 0 has written the last epoch
    return TrainOutcome(spec.name, checkpoint_dir, state.history, state.best_epoch, state.best_score, resumed_from)


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def use_deterministic_kernels(device: torch.device) -> None:
    """Make a seeded CUDA run repeatable: deterministic cuBLAS and cuDNN kernels. An op that has no deterministic
    CUDA kernel warns instead of failing. On the CPU the kernels are deterministic already."""
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts, i.e. before first use
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def _rng_state(device: torch.device, shuffler: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random stream an epoch uses: the CPU one (augmentation draws, dropout on the CPU), the shuffle, and
    on CUDA the device's own (dropout there)."""
    rng = {"torch": torch.get_rng_state(), "shuffle": shuffler.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _restore_rng(rng: dict[str, torch.Tensor], device: torch.device, shuffler: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    shuffler.set_state(rng["shuffle"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


@dataclass
class _Step:
    """One optimiser step in the run's precision: autocast forward, scaled backward (fp16), unscaled step."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: Precision
    device: torch.device

    def forward(self, model: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
        """The model's fp32 output on ``inputs`` (a grader's images and levels, a localiser's images)."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast(self.device):
            return model(*inputs).float()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed; the scale then backs off
        self.scaler.update()


def _train_epoch(model, dataset, recipe, criterion, shuffler, step: _Step, progress, label) -> dict:
    model.train()
    loader = batches(dataset, recipe.batch_size, shuffle_with=shuffler)
    total_loss, seen, predicted, truth = 0.0, 0, [], []
    for images, levels, labels in tqdm(loader, desc=label, unit="batch", leave=False, disable=not progress or None):
        images, levels, labels = _on_device(images, levels, labels, model.data_config, recipe, step.device)
        logits = step.forward(model, images, levels)
        loss = criterion(logits, labels)
        step.backward(loss)
        total_loss += float(loss.detach()) * len(labels)
        seen += len(labels)
        predicted.append(logits.argmax(dim=1).cpu())
        truth.append(labels.cpu())
    y_pred, y_true = torch.cat(predicted).numpy(), torch.cat(truth).numpy()
    return _train_stats(total_loss / max(seen, 1), y_true, y_pred)


def _train_epoch_ranks(wrapped, model, dataset, recipe, weights, epoch, ranks, step: _Step, progress, label) -> dict:
    """One epoch of this rank's shards. Its loss is its share of the whole batch's class-weighted mean, times the
    world size, so that DDP's average of the ranks' gradients is the whole batch's gradient."""
    wrapped.train()
    steps = distributed.epoch_steps(len(dataset), recipe.batch_size, seed=recipe.seed, epoch=epoch,
                                    world_size=ranks.world_size)
    read, predicted, total_loss = [], [], 0.0
    for indices in tqdm(steps, desc=label, unit="batch", leave=False, disable=not progress or None):
        mine = distributed.shard(indices, ranks)
        images, levels, labels = _on_device(*dataset[mine], model.data_config, recipe, step.device)
        logits = step.forward(wrapped, images, levels)
        batch_weight = weights[dataset.labels[indices].to(step.device)].sum()
        share = F.cross_entropy(logits, labels, weight=weights, reduction="sum") / batch_weight
        step.backward(share * ranks.world_size)
        total_loss += float(share.detach()) * len(indices)  # summed over ranks: the batch's mean loss times its size
        read.append(mine)
        predicted.append(logits.argmax(dim=1).cpu())
    mine_read = [index for indices in read for index in indices]
    everyone = distributed.gather((mine_read, torch.cat(predicted).tolist(), total_loss), ranks)
    distributed.check_coverage([indices for indices, _, _ in everyone], len(dataset))
    order = np.array([index for indices, _, _ in everyone for index in indices])
    y_pred = np.array([label for _, labels, _ in everyone for label in labels])
    y_true = dataset.labels.numpy()[order]
    return _train_stats(sum(loss for _, _, loss in everyone) / len(dataset), y_true, y_pred)


def _on_device(images, levels, labels, data_config, recipe, device):
    images = augment_batch(images.to(device), recipe.flip_probability, recipe.rotation_degrees)
    return model_batch(images, data_config), levels.to(device), labels.to(device)


def _train_stats(mean_loss: float, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    return {
        "train_loss": mean_loss,
        "train_accuracy": float(accuracy_score(y_true, y_pred)),
        "train_macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=[0, 1, 2], zero_division=0)),
    }


@torch.inference_mode()
def predict_logits(
    model: SpineCADModel, dataset: SliceDataset, device: torch.device, *, batch_size: int = 64,
    criterion: nn.Module | None = None, precision: Precision | None = None,
) -> tuple[np.ndarray, float]:
    """Logits (N, 3) for every sample in order, and the mean loss when a criterion is given. ``precision``
    defaults to the one the run trains in on ``device``."""
    model.eval()
    precision = precision or choose_precision(device, training=True)
    loader = batches(dataset, batch_size)
    outputs, total_loss = [], 0.0
    for images, levels, labels in loader:
        with precision.autocast(device):
            logits = model(model_batch(images, model.data_config).to(device), levels.to(device)).float()
        if criterion is not None:
            total_loss += float(criterion(logits, labels.to(device))) * len(labels)
        outputs.append(logits.cpu())
    return torch.cat(outputs).numpy().astype(np.float64), total_loss / max(len(dataset), 1)


@torch.inference_mode()
def feature_maps(model: SpineCADModel, dataset: SliceDataset, device: torch.device, *,
                 batch_size: int = 64, precision: Precision | None = None) -> Iterator[torch.Tensor]:
    """The heatmap layer's feature maps (B, C, H, W) of every sample, batch by batch, as the predictor reads them."""
    model.eval()
    precision = precision or choose_precision(device, training=True)
    for images, _, _ in batches(dataset, batch_size):
        with precision.autocast(device):
            yield model.backbone.features_with_map(model_batch(images, model.data_config).to(device))[1].float()


def predict_probs(
    model: SpineCADModel, dataset: SliceDataset, device: torch.device, *, batch_size: int = 64,
    criterion: nn.Module | None = None, precision: Precision | None = None,
) -> tuple[np.ndarray, float]:
    """Probabilities (N, 3) at the model's temperature for every sample in order, and the mean loss."""
    logits, loss = predict_logits(model, dataset, device, batch_size=batch_size, criterion=criterion,
                                  precision=precision)
    return softmax(logits / model.config.temperature, axis=1), loss


def save_checkpoint(model: SpineCADModel | LocalizerModel, target: Path, *, metrics: dict | None = None,
                    familiarity: Familiarity | None = None) -> None:
    """Write the Hub-format checkpoint (a grader's, with its familiarity statistics when given, or a localiser's) to
    a staging folder, then swap it in for ``target`` atomically."""
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    to_save = model
    if next(model.parameters()).device.type != "cpu":
        to_save = type(model)(model.config)
        to_save.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    to_save.save_pretrained(staging, model_card_kwargs={"metrics": metrics} if metrics else None)
    if familiarity is not None:
        familiarity.save(staging)
    replace_directory(staging, target)


def _training_facts(recipe: Recipe, data: TrainingData, state: ResumeState, precision: Precision) -> dict:
    return {
        **data.facts,
        "precision": precision.name,
        "epochs": recipe.epochs,
        "best_epoch": state.best_epoch,
        "best_val_macro_f1": round(state.best_score, 6),
        "selection": recipe.selection,
        "seed": recipe.seed,
        "pretrained": recipe.pretrained,
        "recipe": recipe.as_dict(),
    }


def _history_for_file(history: list[dict]) -> list[dict]:
    return [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()} for row in history]


def _fingerprint(spec: BackboneSpec, recipe: Recipe, data: TrainingData, precision: Precision,
                 ranks: distributed.Ranks | None) -> str:
    """Everything a resumed run must share with the one that saved the state (a 2-rank run shuffles differently)."""
    payload = json.dumps([spec.training_dict(), recipe.as_dict(), data.fingerprint, torch.__version__,
                          precision.name, ranks.world_size if ranks else 1], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
