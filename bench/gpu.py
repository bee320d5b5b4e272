"""The GPU path measured in one prepared script (under 5 minutes on one CUDA GPU; also runs on the CPU).

    python bench/gpu.py                          # CUDA: paper profile, 50 timed predictions, 20 training steps
    python bench/gpu.py --profile cpu --predictions 5 --train-steps 2     # the CPU smoke run the tests use

For each of the six backbones (random init; weights do not change the cost):
  * one slice, all five levels: latency p50 in fp32, bf16 and fp16 autocast (fp16: what pre-Ampere GPUs get; CUDA
    only), against the fp32 figure as the named baseline, and p95 in the precision the device gets by default
  * a 20-slice series through ``predict_series`` in that default precision: ms per slice
  * agreement of probabilities between the device and the CPU in fp32 (max |p_device - p_cpu|), per precision
  * training throughput (images/s, batch 32, the cached dataset of a phantom set) in the training precision the
    device gets (fp16 with a GradScaler before Ampere), and peak GPU memory of the training steps
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from spinecad.inference.devices import resolve_device
from spinecad.inference.loading import LoadedModel
from spinecad.inference.precision import choose_precision
from spinecad.inference.predictor import Predictor
from spinecad.models.model import SpineCADModel
from spinecad.models.registry import profile
from train.augment import augment_batch
from train.cache import attach_positions, build_cache
from train.data import SliceDataset, batches, model_batch
from train.loop import _Step
from train.recipe import PAPER
from train.rsna import build_sample_index


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


SERIES = 20


def prediction_latencies(
    model: SpineCADModel, device: torch.device, precision: str | None, n: int
) -> tuple[list[float], np.ndarray]:
    """ms per prediction of ``n`` new slices in ``precision`` (None: the device's default), and the probabilities
    of a fixed reference slice."""
    predictor = Predictor([LoadedModel("m", model.display_name, model, "bench")], device=device, precision=precision)
    rng = np.random.default_rng(0)
    reference_image = np.random.default_rng(123).random((256, 256)).astype(np.float32)  # same for every device
    times, probs = [], None
    for i in range(n + 2):
        image = rng.random((256, 256)).astype(np.float32) if i else reference_image
        start = time.perf_counter()
        output = predictor.predict(image).outputs[0]  # a new image each time: the backbone always runs
        if i >= 2:
            times.append((time.perf_counter() - start) * 1000)
        if i == 0:
            probs = output.probs
    return times, probs


def series_ms_per_slice(model: SpineCADModel, device: torch.device, repeats: int) -> float:
    """Median ms per slice of a batched 20-slice series in the device's default precision."""
    predictor = Predictor([LoadedModel("m", model.display_name, model, "bench")], device=device)
    rng = np.random.default_rng(1)
    times = []
    for i in range(repeats + 1):
        series = [rng.random((256, 256)).astype(np.float32) for _ in range(SERIES)]
        start = time.perf_counter()
        predictor.predict_series(series, batch_size=SERIES)
        if i:
            times.append((time.perf_counter() - start) * 1000 / SERIES)
    return statistics.median(times)


def training_throughput(model: SpineCADModel, dataset: SliceDataset, device: torch.device, steps: int) -> float:
    model.train()
    precision = choose_precision(device, training=True)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.grad_scaler)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.02)
    train_step = _Step(optimizer, scaler, precision, device)  # what python -m train runs: autocast, scaled backward
    if len(dataset) < PAPER.batch_size:
        raise SystemExit(f"need at least {PAPER.batch_size} training slices for one full batch, got {len(dataset)}")
    loader = batches(dataset, PAPER.batch_size, shuffle_with=torch.Generator().manual_seed(0), drop_last=True)
    seen, started, step = 0, None, 0
    while step < steps + 1:
        for images, levels, labels in loader:
            if step == 1:  # step 0 is warm-up
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
            images = augment_batch(images.to(device), PAPER.flip_probability, PAPER.rotation_degrees)
            logits = train_step.forward(model, model_batch(images, model.data_config), levels.to(device))
            train_step.backward(torch.nn.functional.cross_entropy(logits, labels.to(device)))
            step += 1
            seen += len(labels) if step > 1 else 0
            if step >= steps + 1:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper", choices=("paper", "cpu"))
    parser.add_argument("--predictions", type=int, default=50)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    cpu = torch.device("cpu")
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, profile={args.profile}")

    with tempfile.TemporaryDirectory() as scratch:
        from train.phantom import write_phantom_dataset

        write_phantom_dataset(Path(scratch) / "phantom", n_studies=16, seed=2)
        index = build_sample_index(Path(scratch) / "phantom")
        rows = index.rows[index.rows["usable"]].copy()
        rows["file"] = [str(index.image_file(p)) for p in rows["image_path"]]
        size = max(spec.input_size for spec in profile(args.profile))
        cache = build_cache(rows["file"].tolist(), Path(scratch) / "cache", size, progress=False)
        dataset = SliceDataset(attach_positions(rows, cache), cache)

        precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
        default = choose_precision(device).name
        print(f"default precision here: {default} (inference), {choose_precision(device, training=True).name} "
              "(training)")
        header = (f"{'backbone':18s} " + " ".join(f"{p + ' p50':>9s}" for p in precisions)
                  + f" {default + ' p95':>9s} {'fp32/' + default:>10s} {'series/sl':>9s} "
                  + " ".join(f"{'|dp| ' + p:>10s}" for p in precisions) + f" {'train img/s':>11s} {'peak MiB':>9s}")
        print(header)
        for spec in profile(args.profile):
            torch.manual_seed(0)
            model = SpineCADModel.build(spec.name).eval()
            cpu_probs = prediction_latencies(_copy(model), cpu, "fp32", 0)[1]
            latencies, agreement = {}, {}
            for precision in precisions:
                latencies[precision], probs = prediction_latencies(_copy(model), device, precision, args.predictions)
                agreement[precision] = np.abs(probs - cpu_probs).max()
            series = series_ms_per_slice(_copy(model), device, max(args.predictions // 10, 1))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            throughput = training_throughput(_copy(model).to(device), dataset, device, args.train_steps)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
            p50 = {p: statistics.median(latencies[p]) for p in precisions}
            print(f"{spec.name:18s} " + " ".join(f"{p50[p]:9.2f}" for p in precisions)
                  + f" {percentile(latencies[default], 95):9.2f} {p50['fp32'] / p50[default]:10.2f} {series:9.2f} "
                  + " ".join(f"{agreement[p]:10.2e}" for p in precisions) + f" {throughput:11.1f} {peak:9.0f}")
    print("latencies in ms (one slice, all five levels); fp32/<default> > 1 means the default precision is faster;"
          f" series/sl = ms per slice of a {SERIES}-slice batched series; |dp| = max probability difference against"
          " the CPU in fp32")
    if device.type == "cpu":
        print("on the CPU there is no fp16 column (a GPU precision), and peak MiB is GPU memory (nan)")


def _copy(model: SpineCADModel) -> SpineCADModel:
    clone = SpineCADModel(model.config)
    clone.load_state_dict(model.state_dict())
    return clone.eval()


if __name__ == "__main__":
    main()
