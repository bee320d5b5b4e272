"""Training-input throughput: the decoded-slice cache against decoding each DICOM per item (the seed repo's way).

    python bench/data.py [--data-dir DIR] [--size 224] [--rounds 5] [--batch-size 32]

Both paths read the same phantom files (written first when no --data-dir is given) and end in the same kind of
batch: (B, 3, S, S), flipped and rotated per sample, normalised. Only how it is made differs:
  baseline  per item: pydicom read + min-max scaling + PIL resize + torchvision flip/rotation (the seed repo)
  cached    one uint8 memory-mapped array decoded once (train/cache.py), read a shuffled batch at a time as
            training reads it (train/data.py); flips and rotations drawn per sample, applied per batch
            (train/augment.py)
The same two paths are also timed without augmentation ("input only").
Prints images/s (median of interleaved rounds) and the ratio cached/baseline (target >= 10x for the input path,
which is what the cache replaces; the augmented pair is printed beside it).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image
from torchvision.transforms import v2

from spinecad.models.preprocess import DataConfig, normalise
from train.augment import augment_batch
from train.cache import attach_positions, build_cache
from train.data import SliceDataset, batches
from train.recipe import PAPER
from train.rsna import build_sample_index

IMAGENET = DataConfig(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def seed_repo_item(path: str, size: int) -> torch.Tensor:
    """The seed repo's per-item loading: read the DICOM, min-max scale, PIL resize."""
    pixels = pydicom.dcmread(path).pixel_array.astype(np.float32)
    pixels = (pixels - pixels.min()) / max(float(pixels.max() - pixels.min()), 1e-6)
    resized = Image.fromarray((pixels * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=PAPER.batch_size)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data_dir
        if data_dir is None:
            from train.phantom import write_phantom_dataset

            data_dir = Path(scratch) / "phantom"
            write_phantom_dataset(data_dir, n_studies=40, seed=1)
        index = build_sample_index(data_dir)
        rows = index.rows[index.rows["usable"]].copy()
        rows["file"] = [str(index.image_file(p)) for p in rows["image_path"]]
        files = rows["file"].tolist()
        cache = build_cache(files, Path(scratch) / "cache", args.size, progress=False)
        dataset = SliceDataset(attach_positions(rows, cache), cache)
        loader = batches(dataset, args.batch_size, shuffle_with=torch.Generator().manual_seed(0))
        per_item_augment = v2.Compose([
            v2.RandomHorizontalFlip(PAPER.flip_probability),
            v2.RandomRotation(PAPER.rotation_degrees, interpolation=v2.InterpolationMode.BILINEAR),
        ])

        def baseline(augment: bool) -> None:
            for start in range(0, len(files), args.batch_size):
                items = [seed_repo_item(file, args.size) for file in files[start:start + args.batch_size]]
                if augment:
                    items = [per_item_augment(item) for item in items]
                normalise(torch.stack(items), IMAGENET)

        def cached(augment: bool) -> None:
            for images, _, _ in loader:
                if augment:
                    images = augment_batch(images, PAPER.flip_probability, PAPER.rotation_degrees)
                normalise(images, IMAGENET)

        runs = {
            "baseline": lambda: baseline(True), "cached": lambda: cached(True),
            "baseline_input": lambda: baseline(False), "cached_input": lambda: cached(False),
        }
        timings: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                timings[name].append(len(files) / (time.perf_counter() - start))
    rate = {name: statistics.median(values) for name, values in timings.items()}
    print(f"{len(files)} images of {args.size} px, batches of {args.batch_size}, {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} torch threads")
    print(f"with flip + rotation:  baseline (decode per item) {rate['baseline']:8.1f} images/s, "
          f"cached {rate['cached']:8.1f} images/s -> {rate['cached'] / rate['baseline']:.1f}x")
    print(f"input only:            baseline (decode per item) {rate['baseline_input']:8.1f} images/s, "
          f"cached {rate['cached_input']:8.1f} images/s -> {rate['cached_input'] / rate['baseline_input']:.1f}x")
    print("target: the cached input path >= 10x the seed repo's per-item decoding (input only).\n"
          "With flip + rotation both paths also pay for augmentation: per item (torchvision) in the baseline,\n"
          "per batch (train/augment.py; on the GPU when training on one) in the cached path.")


if __name__ == "__main__":
    main()
