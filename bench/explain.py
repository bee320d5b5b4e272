"""Heatmap cost per model against a plain prediction of the same model, on one slice.

    python bench/explain.py                    # the models of checkpoints/manifest.json (the demo set)
    python bench/explain.py --profile paper    # the six paper-size backbones (random init), 224 px
    python bench/explain.py --profile cpu      # their shrunk CPU siblings (random init)

Prints, per model, medians (ms) of:
  (a) a plain prediction: preprocess + forward at one level, no gradients   (baseline)
  (b) its heatmap: preprocess + forward + backward + CAM + resize + overlay (spinecad.inference.heatmaps)
and the ratio b/a. Runs are interleaved so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from timing import interleaved_medians  # bench/timing.py (the script folder is on sys.path)

from spinecad.inference.heatmaps import explain_slice
from spinecad.inference.loading import LoadedModel
from spinecad.inference.predictor import Predictor
from spinecad.labels import level_index
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
    print(f"{'model':18s} {'predict ms':>11s} {'heatmap ms':>11s} {'ratio':>6s}  method")
    for loaded in predictor.models:
        model = loaded.model

        @torch.inference_mode()
        def predict(model=model) -> None:
            model(slice_to_tensor(pixels, model.data_config).to(predictor.device), level)

        def heatmap(loaded=loaded) -> None:
            explain_slice([loaded], pixels, LEVEL, device=predictor.device)

        medians = interleaved_medians({"predict": predict, "heatmap": heatmap}, args.repeats)
        method = explain_slice([loaded], pixels, LEVEL, device=predictor.device)[0].method
        print(f"{loaded.name:18s} {medians['predict']:11.1f} {medians['heatmap']:11.1f} "
              f"{medians['heatmap'] / medians['predict']:6.1f}  {method}")


if __name__ == "__main__":
    main()
