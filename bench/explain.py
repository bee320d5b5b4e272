"""Heatmap cost per model against a plain prediction of the same model, batched heatmaps, and heatmaps in bf16.

    python bench/explain.py                    # the models of checkpoints/manifest.json (the demo set)
    python bench/explain.py --profile paper    # the six paper-size backbones (random init), 224 px
    python bench/explain.py --profile cpu      # their shrunk CPU siblings (random init)

Prints, per model, medians (ms) of:
  (a) a plain prediction: preprocess + forward at one level, no gradients   (baseline)
  (b) its heatmap: preprocess + forward + backward + CAM + resize + overlay (spinecad.inference.heatmaps)
  (c) the five levels' heatmaps in one batched pass (``explain_slices``), per level
and the ratios b/a and c/b (batched per level over one alone). Runs are interleaved so machine noise hits all alike.
Then, per model, whether its heatmap may run in the predictor's precision: max |map_bf16 - map_fp32| (maps in
[0, 1]) of the heatmap computed under CPU bf16 autocast, on the slice above and on the example files.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from agreement import example_slices  # bench/agreement.py (the script folder is on sys.path)
from timing import interleaved_medians  # bench/timing.py

from spinecad.inference.heatmaps import explain_slice, explain_slices
from spinecad.inference.loading import LoadedModel
from spinecad.inference.precision import BF16
from spinecad.inference.predictor import Predictor
from spinecad.labels import LEVELS, level_index
from spinecad.models.model import SpineCADModel
from spinecad.models.preprocess import slice_to_tensor
from spinecad.models.registry import profile

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
DEMO_MANIFEST = Path(os.environ.get("SPINECAD_MANIFEST") or CHECKPOINTS / "manifest.json")
LEVEL = "L4/L5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=DEMO_MANIFEST,
                        help="the models to explain (default: the demo set of this checkout)")
    parser.add_argument("--profile", choices=("paper", "cpu"), help="random-init backbones instead of the manifest")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.profile:
        torch.manual_seed(0)
        models = [SpineCADModel.build(spec.name).eval() for spec in profile(args.profile)]
        predictor = Predictor([LoadedModel(m.config.backbone["name"], m.display_name, m, "bench") for m in models],
                              device=args.device)
    else:
        predictor = Predictor.from_manifest(args.manifest, device=args.device)
    pixels = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    level = torch.tensor([level_index(LEVEL)], device=predictor.device)
    print(f"{len(predictor.models)} models on {predictor.device}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"{'model':18s} {'predict ms':>11s} {'heatmap ms':>11s} {'b/a':>6s} {'5 batched':>11s} {'c/b':>6s}  method")
    for loaded in predictor.models:
        model = loaded.model

        @torch.inference_mode()
        def predict(model=model) -> None:
            model(slice_to_tensor(pixels, model.data_config).to(predictor.device), level)

        def heatmap(loaded=loaded) -> None:
            explain_slice([loaded], pixels, LEVEL, device=predictor.device)

        def batched(loaded=loaded) -> None:
            explain_slices([loaded], [(pixels, level) for level in LEVELS], device=predictor.device)

        medians = interleaved_medians({"predict": predict, "heatmap": heatmap, "batched": batched}, args.repeats)
        method = explain_slice([loaded], pixels, LEVEL, device=predictor.device)[0].method
        per_level = medians["batched"] / len(LEVELS)
        print(f"{loaded.name:18s} {medians['predict']:11.1f} {medians['heatmap']:11.1f} "
              f"{medians['heatmap'] / medians['predict']:6.1f} {per_level:11.1f} {per_level / medians['heatmap']:6.2f}"
              f"  {method}")
    if predictor.device.type == "cpu" and not args.profile:  # random-init maps say nothing of trained ones
        bf16_maps(predictor, [pixels, *example_slices()])


def bf16_maps(predictor: Predictor, slices: list[np.ndarray]) -> None:
    """How far each model's heatmaps move when computed under bf16 autocast (forward and backward)."""
    print(f"heatmaps under CPU bf16 autocast against fp32, {len(slices)} slices, every level:")
    pairs = [(p, level) for p in slices for level in LEVELS]
    for loaded in predictor.models:
        worst = 0.0
        exact = explain_slices([loaded], pairs, device="cpu")
        # The CAM library reads the layer's output and gradient as numpy, which has no bf16: the read layer hands on
        # an fp32 copy (what comes after it is recast by autocast as before).
        handle = loaded.model.backbone.cam_layer().register_forward_hook(lambda module, inputs, output: output.float())
        try:
            with BF16.autocast("cpu"):
                fast = explain_slices([loaded], pairs, device="cpu")
        finally:
            handle.remove()
        for (a,), (b,) in zip(exact, fast, strict=True):
            if a.heatmap is not None:
                worst = max(worst, float(np.abs(a.heatmap - b.heatmap).max()))
        print(f"{loaded.name:18s} max |map_bf16 - map_fp32| = {worst:.3f}")


if __name__ == "__main__":
    main()
