"""Predictor cost against bare backbones, the seed repo's naive path, fp32, and one slice at a time.

    python bench/predict.py                 # the six paper-profile models (random init), 224 px
    python bench/predict.py --profile cpu   # the shrunk CPU siblings, for a quick look

Prints medians (ms), all timed in interleaved rounds of one run, of:
  (a) the sum of bare backbone forward passes on ready input tensors, fp32   (baseline)
  (b) the predictor (forced fp32) on a new image, reading one level
  (c) the predictor (forced fp32) on a new image, reading all five levels
  (d) a level switch on a cached image
  (e) the seed repo's naive path: preprocess + full forward per model per level (5 backbone passes each)
  (f) the predictor in its own precision per model (bf16 where the CPU and the registry row allow), all levels
  (g) a 20-slice series through ``predict_series`` in its own precision, per slice
and the ratios b/a (target <= 1.15), c/b (target <= 1.05), e/c, d (target < 5 ms), bf16/fp32 = f/c (target <=
0.55), series/single = g/c (target <= 0.40); then max |p_bf16 - p_fp32| (target <= 0.02) on the trained weights
that decided the registry rows (bench/agreement.py: the demo set for the CPU rows, probe heads for the paper rows).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from agreement import demo_rows, paper_rows  # bench/agreement.py (the script folder is on sys.path)
from timing import interleaved_medians  # bench/timing.py

from spinecad.inference.loading import LoadedModel
from spinecad.inference.precision import cpu_has_native_bf16
from spinecad.inference.predictor import Predictor
from spinecad.labels import LEVELS
from spinecad.models.model import SpineCADModel
from spinecad.models.preprocess import slice_to_tensor
from spinecad.models.registry import profile

REPO = Path(__file__).resolve().parents[1]
SERIES = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper", choices=("paper", "cpu"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--probe-slices", type=int, default=30,
                        help="phantom slices that train the paper rows' probe heads (a third more are held out)")
    parser.add_argument("--demo-slices", type=int, default=60, help="phantom slices for the demo set's agreement")
    args = parser.parse_args()

    torch.manual_seed(0)
    models = [SpineCADModel.build(spec.name).eval() for spec in profile(args.profile)]
    loaded = [LoadedModel(m.config.backbone["name"], m.display_name, m, "bench") for m in models]
    predictor = Predictor(loaded, device=args.device, precision="fp32")
    native = predictor.device.type == "cuda" or cpu_has_native_bf16()
    fast = Predictor(loaded, device=args.device)  # the same models, each in the precision chosen for it
    device = predictor.device
    rng = np.random.default_rng(0)
    slice_pixels = rng.random((256, 256)).astype(np.float32)
    series = [rng.random((256, 256)).astype(np.float32) for _ in range(SERIES)]
    ready = [slice_to_tensor(slice_pixels, m.data_config).to(device) for m in models]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def bare() -> None:
        for model, batch in zip(models, ready, strict=True):
            model.backbone.model(batch)
        sync()

    def fresh_image() -> np.ndarray:
        predictor.clear_cache()
        return slice_pixels

    def one_level() -> None:
        predictor.predict(fresh_image()).to_dict("L4/L5")

    def all_levels() -> None:
        prediction = predictor.predict(fresh_image())
        for level in LEVELS:
            prediction.to_dict(level)

    predictor.predict(slice_pixels)

    def switch() -> None:
        predictor.predict(slice_pixels).to_dict("L2/L3")

    @torch.inference_mode()
    def naive() -> None:
        for index in range(len(LEVELS)):
            for model in models:
                batch = slice_to_tensor(slice_pixels, model.data_config).to(device)
                torch.softmax(model(batch, torch.tensor([index], device=device)), dim=-1).cpu()
        sync()

    def own_precision() -> None:
        fast.clear_cache()
        prediction = fast.predict(slice_pixels)
        for level in LEVELS:
            prediction.to_dict(level)

    def batched_series() -> None:
        fast.clear_cache()
        for prediction in fast.predict_series(series, batch_size=SERIES):
            prediction.to_dict("L4/L5")

    runs = {"a": bare, "b": one_level, "c": all_levels, "d": switch, "e": naive, "g": batched_series}
    if native:
        runs["f"] = own_precision
    medians = interleaved_medians(runs, args.repeats)
    a, b, c, d, e, g = (medians[name] for name in "abcdeg")
    precisions = ", ".join(f"{m.name} {fast.precisions[m.key].name}" for m in loaded)
    print(f"profile={args.profile} device={device} threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"precisions: {precisions}")
    rows = [("(a) bare backbones", a), ("(b) predictor, one level", b), ("(c) predictor, all levels", c),
            ("(d) cached level switch", d), ("(e) naive per-level path", e)]
    if native:
        rows.append(("(f) own precision, all levels", medians["f"]))
    rows.append((f"(g) series of {SERIES}, per slice", g / SERIES))
    for label, value in rows:
        print(f"{label:32s} {value:10.2f} ms (median)")
    print(f"b/a = {b / a:.3f}  (target <= 1.15)")
    print(f"c/b = {c / b:.3f}  (target <= 1.05)")
    print(f"e/c = {e / c:.2f}  (naive path over predictor, all levels)")
    print(f"d   = {d:.2f} ms  (target < 5 ms)")
    if native:
        print(f"bf16/fp32 = {medians['f'] / c:.3f} (target <= 0.55)")
    else:
        print("this CPU has no native bf16 (AVX512-BF16, AMX or Arm BF16): everything above ran fp32; no bf16/fp32")
    print(f"series/single = {g / SERIES / c:.3f} (target <= 0.40)")
    if device.type == "cpu":
        agreement(args, native)


def agreement(args: argparse.Namespace, native: bool) -> None:
    """max |p_bf16 - p_fp32| on the weights that decided the registry rows (bench/agreement.py): the demo set's
    trained models (over the rows that run bf16), then each paper backbone under its probe head."""
    print(f"agreement, demo set ({args.demo_slices} phantom slices + the example files):")
    demo = demo_rows(REPO / "checkpoints" / "manifest.json", args.demo_slices)
    print(f"agreement, paper rows: random-init backbone under a probe head trained on its own fp32 features "
          f"({args.probe_slices} training slices):")
    paper = paper_rows(args.probe_slices, max(args.probe_slices // 3, 1))
    where = "" if native else " (where the CPU has native bf16; this one runs fp32)"
    bf16_demo = {key: dp for key, (dp, allowed) in demo.items() if allowed}
    if bf16_demo:
        worst = max(bf16_demo, key=bf16_demo.get)
        print(f"max |p_bf16 - p_fp32| = {bf16_demo[worst]:.4f} (target <= 0.02): the demo set's trained models, over "
              f"the {len(bf16_demo)} of {len(demo)} that run bf16{where}; worst {worst}")
    else:
        print("max |p_bf16 - p_fp32|: no demo-set model runs bf16")
    for name, (dp, allowed) in paper.items():
        runs = "runs bf16" if allowed else "runs fp32, so bf16 never reaches its grades"
        print(f"  paper {name:18s} max |p_bf16 - p_fp32| = {dp:.4f} ({runs}; probe head)")

if __name__ == "__main__":
    main()
