"""``--dry-run``: what a run will read, write and cost, from the index and a short timed run; nothing is written.

The estimate times a few optimiser steps per transfer phase and a few forward passes of each model (random init,
random pixels of the right shape) on the chosen device, in the run's precision, and decodes a few images; it then
scales by the number of samples, epochs and workers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from spinecad.imaging import ImageReadError, read_slice
from spinecad.inference.precision import Precision
from spinecad.models.model import ModelConfig, SpineCADModel
from spinecad.models.registry import BackboneSpec
from train.cache import cache_key
from train.loop import set_trainable
from train.preflight import PreflightError, cache_bytes, free_bytes, human_bytes, output_bytes
from train.recipe import Recipe
from train.rsna import SampleIndex
from train.split import make_split

TIMED_STEPS, DECODE_SAMPLE = 2, 8


@dataclass(frozen=True)
class ModelEstimate:
    name: str
    seconds_per_epoch: float
    seconds: float  # every epoch, then the evaluation


def dry_run(index: SampleIndex, specs: list[BackboneSpec], recipe: Recipe, *, output_dir: Path, cache_dir: Path,
            device: torch.device, precision: Precision, workers: int, log: Callable[[str], None] = print) -> None:
    """Print images found, the cache and output sizes against free space, and the estimated time per model."""
    usable = index.rows[index.rows["usable"]]
    files = sorted({str(index.image_file(path)) for path in usable["image_path"]})
    found = [file for file in files if Path(file).is_file()]
    if not found:
        raise PreflightError(f"No images found: the index names {len(files)} slice files under {index.root} and "
                             f"none exists (is train_images/ there?). Nothing to train on.")
    size = max(spec.input_size for spec in specs)
    log(f"images found: {len(found)} of the {len(files)} slices the index chooses "
        f"({len(usable)} usable samples of {index.rows['study_id'].nunique()} studies)")
    cached = (cache_dir / f"slices-{size}-{cache_key(found, size)}.json").exists()
    to_write = 0 if cached else cache_bytes(len(found), size)
    log(f"cache: {'complete, reused' if cached else human_bytes(to_write) + ' to write'} in {cache_dir} "
        f"({size} px; {human_bytes(free_bytes(cache_dir))} free)")
    log(f"outputs: about {human_bytes(output_bytes(specs, recipe.head))} of checkpoints and resume states in "
        f"{output_dir} ({human_bytes(free_bytes(output_dir))} free)")

    counts = make_split(index).merge(usable[["study_id"]], on="study_id")["split"].value_counts()
    n_train, n_val, n_test = (int(counts.get(split, 0)) for split in ("train", "val", "test"))
    decode = 0.0 if cached else _decode_seconds(found) * len(found)
    batch = max(1, min(recipe.batch_size, n_train))
    log(f"timing on {device} ({precision.name}; {TIMED_STEPS} steps of {batch} images per phase, random init); "
        f"{n_train} train / {n_val} val / {n_test} test samples, {recipe.epochs} epochs")
    estimates = [_estimate(spec, recipe, device, precision, batch, (n_train, n_val, n_test)) for spec in specs]
    for estimate in estimates:
        log(f"  {estimate.name:<24} {_duration(estimate.seconds_per_epoch)} per epoch, "
            f"{_duration(estimate.seconds)} with evaluation")
    makespan = _makespan([estimate.seconds for estimate in estimates], workers)
    log(f"estimated total: {_duration(decode + makespan)} ({_duration(decode)} decoding the cache, then "
        f"{len(specs)} models on {workers} worker{'s' * (workers > 1)})")


def _estimate(spec: BackboneSpec, recipe: Recipe, device: torch.device, precision: Precision, batch: int,
              counts: tuple[int, int, int]) -> ModelEstimate:
    n_train, n_val, n_test = counts
    torch.manual_seed(0)
    model = SpineCADModel(ModelConfig(backbone=spec.to_dict(), head=recipe.head)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
    images = torch.rand(batch, 3, spec.input_size, spec.input_size, device=device)
    levels = torch.zeros(batch, dtype=torch.long, device=device)
    per_phase = []
    for phase in recipe.phases:
        if phase.epochs == 0:
            per_phase.append(0.0)
            continue
        set_trainable(model, phase)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast(device):
                loss = model(images, levels).float().logsumexp(dim=1).mean()
            loss.backward()
            optimizer.step()

        per_phase.append(_timed(step, device) / batch)
    model.eval()

    @torch.inference_mode()
    def forward() -> None:
        with precision.autocast(device):
            model(images, levels)

    infer = _timed(forward, device) / batch
    train = sum(seconds * n_train * phase.epochs for seconds, phase in zip(per_phase, recipe.phases, strict=True))
    validation = infer * n_val * recipe.epochs
    evaluation = infer * (2 * n_val + n_test + n_train)  # logits of val and test, feature maps of train and val
    return ModelEstimate(spec.name, (train + validation) / max(recipe.epochs, 1), train + validation + evaluation)


def _timed(action: Callable[[], None], device: torch.device) -> float:
    """Median seconds of ``action`` over TIMED_STEPS runs after one warm-up."""
    times = []
    for attempt in range(TIMED_STEPS + 1):
        started = time.perf_counter()
        action()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if attempt:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def _decode_seconds(files: list[str]) -> float:
    """Median seconds to read one image (a sample of the files)."""
    times = []
    for file in files[:DECODE_SAMPLE]:
        started = time.perf_counter()
        try:
            read_slice(file)
        except ImageReadError:
            continue
        times.append(time.perf_counter() - started)
    return statistics.median(times) if times else 0.0


def _makespan(seconds: list[float], workers: int) -> float:
    """Wall time when ``workers`` each take the next model in order as soon as they are free."""
    loads = [0.0] * max(workers, 1)
    for value in seconds:
        loads[loads.index(min(loads))] += value
    return max(loads)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
