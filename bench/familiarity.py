"""What the unfamiliar-image flag costs: the predictor on a new slice with and without familiarity statistics.

    python bench/familiarity.py                 # the six paper-profile models (random init), 224 px
    python bench/familiarity.py --profile cpu   # the shrunk CPU siblings

The statistics are fitted on a few phantom slices (their values do not change the cost, their shape does: the
heatmap layer's grid times 32 channels). Prints the medians (ms) and `with/without = X (target <= 1.05)`.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch
from timing import interleaved_medians  # bench/timing.py (the script folder is on sys.path)

from spinecad.inference.familiarity import fit_familiarity
from spinecad.inference.loading import LoadedModel
from spinecad.inference.predictor import Predictor
from spinecad.models.model import SpineCADModel
from spinecad.models.preprocess import slice_to_tensor
from spinecad.models.registry import profile
from train.phantom import render_axial_scene

TARGET = 1.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper", choices=("paper", "cpu"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fit-slices", type=int, default=48)
    args = parser.parse_args()

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    slices = [np.clip(render_axial_scene(k % 3, rng, 256).pixels / 3000.0, 0, 1).astype(np.float32)
              for k in range(args.fit_slices)]
    plain, flagged = [], []
    for spec in profile(args.profile):
        model = SpineCADModel.build(spec.name).eval()
        with torch.inference_mode():
            maps = torch.cat([model.backbone.features_with_map(slice_to_tensor(s, model.data_config))[1]
                              for s in slices])
        half = len(slices) // 2
        familiarity = fit_familiarity([maps[:half]], [maps[half:]])
        loaded = LoadedModel(spec.name, spec.display_name, model, "bench")
        plain.append(loaded)
        flagged.append(replace(loaded, familiarity=familiarity))
    without, with_flag = Predictor(plain, device="cpu"), Predictor(flagged, device="cpu")
    fresh = iter(np.random.default_rng(1).random((10_000, 64, 64), dtype=np.float32))  # a new image every call

    def run(predictor: Predictor):
        return lambda: predictor.predict(next(fresh))

    medians = interleaved_medians({"without": run(without), "with": run(with_flag)}, args.repeats)
    print(f"{len(plain)} {args.profile}-profile models, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"predict, no familiarity statistics  {medians['without']:9.2f} ms")
    print(f"predict, with the unfamiliar flag   {medians['with']:9.2f} ms")
    print(f"with/without = {medians['with'] / medians['without']:.3f} (target <= {TARGET})")


if __name__ == "__main__":
    main()
