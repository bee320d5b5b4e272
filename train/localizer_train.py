"""Train the disc-level localiser: one plain loop, augmentation that moves the points with the pixels, resumable.

Loss per labelled level: cross-entropy of the predicted map against a Gaussian around the true point (one mode, in
the right place) plus the L1 distance of the map's soft-argmax (sub-pixel). After every epoch the best checkpoint
(lowest validation point error) and the resume state (``train.state``) are replaced atomically, so a killed run
restarts from its last finished epoch and ends as an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from spinecad.atomic import recover_directory
from spinecad.inference.precision import Precision, choose_precision
from spinecad.models.localizer import OUTPUT_STRIDE, LocalizerConfig, LocalizerModel, decode_maps
from spinecad.models.preprocess import normalise, resize_unit
from train.loop import _restore_rng, _rng_state, _Step, save_checkpoint, use_deterministic_kernels
from train.state import ResumeState, load_state, save_state


@dataclass(frozen=True)
class LocalizerRecipe:
    """Everything that decides a localiser run's result (its fingerprint guards resumes)."""

    epochs: int = 40
    lr: float = 1e-3  # AdamW, cosine decay to zero over the epochs
    weight_decay: float = 1e-4
    batch_size: int = 16
    sigma_cells: float = 1.0  # width of the target Gaussian, in heatmap cells
    l1_weight: float = 1.0  # weight of the soft-argmax distance (cells) beside the map's cross-entropy
    flip_probability: float = 0.5  # left-right: front and back swap, the levels keep their order
    rotation_degrees: float = 10.0
    scale_range: float = 0.1  # zoom drawn from 1 +- this
    shift_fraction: float = 0.06  # shift drawn from +- this share of the side
    gamma_range: float = 0.3  # intensity gamma drawn from exp(+- this)
    pretrained: bool = True
    seed: int = 42

    def as_dict(self) -> dict:
        return asdict(self)


PAPER_RECIPE = LocalizerRecipe()
DEMO_RECIPE = LocalizerRecipe(epochs=60, batch_size=8, lr=2e-3, pretrained=False)


@dataclass
class PointSet:
    """Square slices (N, 1, S, S) as uint8 (the cache's bytes) and their points (N, 5, 2) in pixels of that square
    (NaN: unlabelled)."""

    images: torch.Tensor
    points: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def unit(self, rows: torch.Tensor | slice) -> torch.Tensor:
        """The chosen slices as float [0, 1]."""
        return self.images[rows].float().div_(255.0)


# ---- Augmentation: one affine per sample, applied to pixels and points alike ------------------------------------

def augment(images: torch.Tensor, points: torch.Tensor, recipe: LocalizerRecipe,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample flipped left-right, rotated, zoomed and shifted with its own draw, and its points with it; a
    random gamma on the pixels. Square images; points are (x, y) pixel centres."""
    batch, size = len(images), images.shape[-1]
    draw = torch.rand(batch, 6, generator=generator, dtype=torch.float64)
    sign = torch.where(draw[:, 0] < recipe.flip_probability, -1.0, 1.0).double()
    angle = (draw[:, 1] * 2 - 1) * math.radians(recipe.rotation_degrees)
    scale = 1 + (draw[:, 2] * 2 - 1) * recipe.scale_range
    shift = (draw[:, 3:5] * 2 - 1) * 2 * recipe.shift_fraction  # normalised units span 2 per side
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    # Forward map in grid_sample's normalised coordinates: out = A @ diag(sign, 1) @ in + shift.
    forward = torch.zeros(batch, 3, 3, dtype=torch.float64)
    forward[:, 0, 0], forward[:, 0, 1], forward[:, 0, 2] = cos * sign, -sin, shift[:, 0]
    forward[:, 1, 0], forward[:, 1, 1], forward[:, 1, 2] = sin * sign, cos, shift[:, 1]
    forward[:, 2, 2] = 1.0
    inverse = torch.linalg.inv(forward)[:, :2].to(images.dtype)
    grid = F.affine_grid(inverse.to(images.device), list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gamma = torch.exp((draw[:, 5] * 2 - 1) * recipe.gamma_range).to(images.dtype).to(images.device)
    moved = moved.clamp(0.0, 1.0).pow(gamma[:, None, None, None])
    unit = (2 * points.double() + 1) / size - 1  # pixel centre -> normalised
    mapped = torch.einsum("bij,blj->bli", forward[:, :2, :2], unit) + forward[:, None, :2, 2]
    return moved, (((mapped + 1) * size - 1) / 2).to(points.dtype)


def model_input(images: torch.Tensor, config: LocalizerConfig) -> torch.Tensor:
    """(B, 1, S, S) [0, 1] slices -> the normalised (B, 3, s, s) input of the localiser's backbone."""
    data = config.data_config
    if images.shape[-1] != data.input_size:
        images = resize_unit(images, data.input_size, data.interpolation)
    return normalise(images, data)


def point_loss(logits: torch.Tensor, points: torch.Tensor, recipe: LocalizerRecipe, window: int) -> torch.Tensor:
    """Mean over labelled levels inside the image of the map's cross-entropy against a Gaussian at the point, plus
    the weighted L1 distance (cells) of the point ``decode_maps`` reads: the soft-argmax in the window around the
    peak. (A soft-argmax over the whole map is pulled towards the map's centre by its spread-out mass.)"""
    height, width = logits.shape[-2:]
    cells = (points + 0.5) / OUTPUT_STRIDE - 0.5  # input pixel -> heatmap cell coordinates
    valid = torch.isfinite(cells).all(-1) & (cells >= -0.5).all(-1) & (cells[..., 0] <= width - 0.5) & \
        (cells[..., 1] <= height - 0.5)
    if not valid.any():
        return logits.sum() * 0.0
    cells = torch.nan_to_num(cells)
    ys = torch.arange(height, device=logits.device, dtype=torch.float32).view(1, 1, height, 1)
    xs = torch.arange(width, device=logits.device, dtype=torch.float32).view(1, 1, 1, width)
    distance = (xs - cells[..., 0, None, None]) ** 2 + (ys - cells[..., 1, None, None]) ** 2
    target = torch.softmax((-distance / (2 * recipe.sigma_cells ** 2)).flatten(2), dim=-1)
    log_probs = logits.float().flatten(2).log_softmax(-1)
    cross_entropy = -(target * log_probs).sum(-1)
    found, _ = decode_maps(logits.float(), window)
    l1 = ((found - points.nan_to_num()) / OUTPUT_STRIDE).abs().sum(-1)
    return ((cross_entropy + recipe.l1_weight * l1) * valid).sum() / valid.sum()


@torch.inference_mode()
def predict(model: LocalizerModel, data: PointSet, device: torch.device, batch_size: int = 32,
            precision: Precision | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Points (N, 5, 2) in pixels of the set's square images and confidences (N, 5), in ``precision`` (default:
    the device's training precision, in which the best epoch is chosen)."""
    model.eval()
    precision = precision or choose_precision(device, training=True)
    points, confidence = [], []
    for start in range(0, len(data), batch_size):
        batch = data.unit(slice(start, start + batch_size))
        with precision.autocast(device):
            logits = model(model_input(batch, model.config).to(device))
        found, sure = model.decode(logits)
        # The model sees input_size pixels; the points are asked for in the images' own.
        points.append((found.cpu().double() + 0.5) * batch.shape[-1] / model.data_config.input_size - 0.5)
        confidence.append(sure.cpu().double())
    return torch.cat(points).numpy(), torch.cat(confidence).numpy()


def mean_error_px(model: LocalizerModel, data: PointSet, device: torch.device,
                  precision: Precision | None = None) -> float:
    """Mean point error (pixels of the square images) over the labelled levels: what selects the best epoch."""
    found, _ = predict(model, data, device, precision=precision)
    error = np.linalg.norm(found - data.points.numpy(), axis=-1)
    return float(np.nanmean(error))


def train_localizer(config: LocalizerConfig, recipe: LocalizerRecipe, train: PointSet, val: PointSet,
                    checkpoint_dir, state_path, *, device: torch.device, facts: dict,
                    log: Callable[[str], None] = print,
                    precision: Precision | None = None) -> tuple[LocalizerModel, list[dict]]:
    """Train, keep the best epoch in ``checkpoint_dir`` and return it (loaded) with the history.

    ``precision`` defaults to the library's choice for training on the device: fp32 on the CPU, bf16 on Ampere
    and later, fp16 with loss scaling on older GPUs (the scaler's state is part of the resume state).
    """
    recover_directory(checkpoint_dir)
    use_deterministic_kernels(device)
    torch.manual_seed(recipe.seed)
    model = LocalizerModel(config)
    if recipe.pretrained:
        model.load_pretrained_weights()
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    precision = precision or choose_precision(device, training=True)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.grad_scaler)
    step = _Step(optimizer, scaler, precision, device)  # the graders' step: autocast forward, scaled backward
    shuffler = torch.Generator().manual_seed(recipe.seed)
    fingerprint = _fingerprint(config, recipe, train, val)
    resumed = load_state(state_path, model=model, optimizer=optimizer, fingerprint=fingerprint, scaler=scaler)
    state = ResumeState(next_epoch=0, history=[], best_score=-math.inf, best_epoch=0)
    if resumed is not None:
        state, rng = resumed
        _restore_rng(rng, device, shuffler)
        log(f"[localizer] resuming after epoch {state.next_epoch} of {recipe.epochs}")
    for epoch in range(state.next_epoch, recipe.epochs):
        started = time.perf_counter()
        lr = recipe.lr * 0.5 * (1 + math.cos(math.pi * epoch / recipe.epochs))  # stateless: resumes exactly
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        order, total = torch.randperm(len(train), generator=shuffler), 0.0
        for start in range(0, len(order), recipe.batch_size):
            rows = order[start:start + recipe.batch_size]
            images, points = augment(train.unit(rows), train.points[rows], recipe)
            logits = step.forward(model, model_input(images, config).to(device))
            loss = point_loss(logits, points.to(device), recipe, config.window)
            step.backward(loss)
            total += float(loss.detach()) * len(rows)
        val_error = mean_error_px(model, val, device, precision)
        row = {"epoch": epoch + 1, "train_loss": round(total / len(train), 6), "val_error_px": round(val_error, 6),
               "lr": lr, "seconds": round(time.perf_counter() - started, 3)}
        state.history.append(row)
        if -val_error > state.best_score:
            state.best_score, state.best_epoch = -val_error, epoch + 1
            model.config.training = {**facts, "epochs": recipe.epochs, "best_epoch": state.best_epoch,
                                     "best_val_error_px": round(val_error, 4), "seed": recipe.seed,
                                     "pretrained": recipe.pretrained, "recipe": recipe.as_dict()}
            save_checkpoint(model, checkpoint_dir)
        state.next_epoch = epoch + 1
        save_state(state_path, model=model, optimizer=optimizer, state=state, fingerprint=fingerprint,
                   rng=_rng_state(device, shuffler), scaler=scaler)
        log(f"[localizer] epoch {epoch + 1}/{recipe.epochs}: train loss {row['train_loss']:.3f} | "
            f"val error {val_error:.2f} px | {row['seconds']:.1f} s")
    return LocalizerModel.load(checkpoint_dir).to(device), state.history


def _fingerprint(config: LocalizerConfig, recipe: LocalizerRecipe, train: PointSet, val: PointSet) -> str:
    digest = hashlib.sha256(json.dumps([{**config.to_dict(), "training": {}}, recipe.as_dict(), torch.__version__],
                                       sort_keys=True).encode())
    for data in (train, val):
        digest.update(data.images.numpy().tobytes())
        digest.update(data.points.numpy().tobytes())
    return digest.hexdigest()
