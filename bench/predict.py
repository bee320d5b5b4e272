"""Predictor cost against bare backbones and against the seed repo's naive path, on one slice.

    python bench/predict.py                 # the six paper-profile models (random init), 224 px
    python bench/predict.py --profile cpu   # the shrunk CPU siblings, for a quick look

Prints medians (ms) of:
  (a) the sum of bare backbone forward passes on ready input tensors   (baseline)
  (b) the predictor on a new image, reading one level
  (c) the predictor on a new image, reading all five levels
  (d) a level switch on a cached image
  (e) the seed repo's naive path: preprocess + full forward per model per level (5 backbone passes each)
and the ratios b/a (target <= 1.15), c/b (target <= 1.05), e/c, and d (target < 5 ms).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from timing import interleaved_medians  # bench/timing.py (the script folder is on sys.path)

from spinecad.inference.loading import LoadedModel
from spinecad.inference.predictor import Predictor
from spinecad.labels import LEVELS
from spinecad.models.model import SpineCADModel
from spinecad.models.preprocess import slice_to_tensor
from spinecad.models.registry import profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper", choices=("paper", "cpu"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    models = [SpineCADModel.build(spec.name).eval() for spec in profile(args.profile)]
    predictor = Predictor([LoadedModel(m.config.backbone["name"], m.display_name, m, "bench") for m in models],
                          device=args.device)
    device = predictor.device
    rng = np.random.default_rng(0)
    slice_pixels = rng.random((256, 256)).astype(np.float32)
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

    medians = interleaved_medians(
        {"a": bare, "b": one_level, "c": all_levels, "d": switch, "e": naive}, args.repeats
    )
    a, b, c, d, e = (medians[name] for name in "abcde")
    print(f"profile={args.profile} device={device} threads={torch.get_num_threads()} repeats={args.repeats}")
    for label, value in (("(a) bare backbones", a), ("(b) predictor, one level", b),
                         ("(c) predictor, all levels", c), ("(d) cached level switch", d),
                         ("(e) naive per-level path", e)):
        print(f"{label:28s} {value:10.2f} ms (median)")
    print(f"b/a = {b / a:.3f}  (target <= 1.15)")
    print(f"c/b = {c / b:.3f}  (target <= 1.05)")
    print(f"e/c = {e / c:.2f}  (naive path over predictor, all levels)")
    print(f"d   = {d:.2f} ms  (target < 5 ms)")


if __name__ == "__main__":
    main()
