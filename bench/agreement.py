"""bf16 against fp32 on the CPU, on trained weights: the measurement that sets each registry row's ``cpu_bf16``.

    python bench/agreement.py                 # both: the demo set's models and the paper rows' probe heads
    python bench/agreement.py --only demo     # the demo set only (seconds)

Demo set (the CPU rows): the committed checkpoints on fresh phantom slices like the examples and on the committed
example files. Paper rows (no trained paper weights here, and ImageNet weights are not cached offline): the
backbone with its seeded random initialisation, frozen, under a head of the paper's shape trained on its fp32
features of phantom slices (a linear-probe training, seconds), then the same comparison on held-out slices. The
head is trained on exactly the features bf16 perturbs, so it is as sensitive to them as a trained model's head.

Prints, per row: the largest relative feature deviation, max |p_bf16 - p_fp32| over every level and slice, the
registry's verdict and whether the measurement supports it (bound: 0.02).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from spinecad.imaging import read_slice
from spinecad.inference.precision import BF16, FP32, Precision, cpu_has_native_bf16
from spinecad.models.model import SpineCADModel
from spinecad.models.preprocess import slice_to_tensor
from spinecad.models.registry import PAPER_PROFILE, cpu_bf16_allowed
from train.phantom import render_axial_scene

REPO = Path(__file__).resolve().parents[1]
BOUND = 0.02
EXAMPLES = REPO / "checkpoints" / "examples"


def phantom_slices(n: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """``n`` phantom axial slices drawn like the examples, grades cycling through the three."""
    rng = np.random.default_rng(seed)
    grades = [k % 3 for k in range(n)]
    return [render_axial_scene(g, rng, 192).pixels for g in grades], grades


def example_slices() -> list[np.ndarray]:
    return [read_slice(path).pixels for path in sorted(EXAMPLES.iterdir()) if path.suffix in (".dcm", ".png")]


@torch.inference_mode()
def features(model: SpineCADModel, slices: list[np.ndarray], precision: Precision, batch: int = 10) -> torch.Tensor:
    """Pooled features (N, D) of ``slices`` in ``precision``, in batches."""
    out = []
    for start in range(0, len(slices), batch):
        x = torch.cat([slice_to_tensor(p, model.data_config) for p in slices[start:start + batch]])
        with precision.autocast("cpu"):
            out.append(model.features(x).float())
    return torch.cat(out)


@torch.inference_mode()
def probabilities(model: SpineCADModel, feats: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model.head_all_levels(feats).float(), dim=-1)


def compare(model: SpineCADModel, slices: list[np.ndarray]) -> tuple[float, float]:
    """(largest relative feature deviation, max |p_bf16 - p_fp32|) of ``model`` over ``slices``."""
    exact, fast = features(model, slices, FP32), features(model, slices, BF16)
    deviation = ((fast - exact).norm(dim=1) / exact.norm(dim=1)).max().item()
    return deviation, (probabilities(model, fast) - probabilities(model, exact)).abs().max().item()


def train_probe_head(model: SpineCADModel, feats: torch.Tensor, grades: list[int], steps: int = 300) -> None:
    """Fit the head (level embedding + MLP) on fixed fp32 features; every level carries the slice's grade."""
    torch.manual_seed(0)
    head = list(model.level_embedding.parameters()) + list(model.classifier.parameters())
    optimizer = torch.optim.AdamW(head, lr=1e-3)
    n_levels = len(model.config.level_names)
    labels = torch.tensor(grades).repeat_interleave(n_levels)
    model.train()
    for _ in range(steps):
        logits = model.head_all_levels(feats).reshape(-1, 3)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def verdict_line(name: str, deviation: float, worst: float, allowed: bool) -> str:
    supported = not allowed or worst <= BOUND
    return (f"{name:22s} feature dev {deviation:7.4f}  max |dp| {worst:.4f}  registry: "
            f"{'bf16' if allowed else 'fp32'}{'' if supported else '  <- NOT supported by this measurement'}")


def demo_rows(manifest: Path, n: int) -> dict[str, tuple[float, bool]]:
    """(max |dp|, registry allows bf16) of each demo-set model over ``n`` phantom slices and the example files
    (printed per row)."""
    from spinecad.inference.loading import load_manifest_models
    from spinecad.inference.manifest import read_manifest

    slices = phantom_slices(n, seed=11)[0] + example_slices()
    worst = {}
    for loaded in load_manifest_models(read_manifest(manifest))[0]:
        deviation, dp = compare(loaded.model, slices)
        worst[loaded.key] = dp, cpu_bf16_allowed(loaded.model.config.backbone_spec)
        print(verdict_line(loaded.key, deviation, *worst[loaded.key]), flush=True)
    return worst


def paper_rows(n_train: int, n_test: int) -> dict[str, tuple[float, bool]]:
    """(max |dp|, registry allows bf16) of each paper row with a probe head trained on its own features (printed
    per row)."""
    train_slices, grades = phantom_slices(n_train, seed=21)
    test_slices = phantom_slices(n_test, seed=22)[0] + example_slices()
    worst = {}
    for spec in PAPER_PROFILE:
        torch.manual_seed(0)
        model = SpineCADModel.build(spec.name).eval()
        train_probe_head(model, features(model, train_slices, FP32), grades)
        deviation, dp = compare(model, test_slices)
        worst[spec.name] = dp, cpu_bf16_allowed(spec)
        print(verdict_line(spec.name, deviation, *worst[spec.name]), flush=True)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("demo", "paper"))
    parser.add_argument("--manifest", type=Path, default=REPO / "checkpoints" / "manifest.json")
    parser.add_argument("--slices", type=int, default=120, help="phantom slices for the demo set")
    parser.add_argument("--probe-train", type=int, default=60)
    parser.add_argument("--probe-test", type=int, default=20)
    args = parser.parse_args()
    if not cpu_has_native_bf16():
        print("this CPU has no native bf16: the predictor runs fp32 here (bf16 would be emulated and slower); the "
              "agreement below is still the hardware-independent rounding effect")
    if args.only != "paper":
        print(f"demo set ({args.manifest}), {args.slices} phantom slices + the example files:")
        demo_rows(args.manifest, args.slices)
    if args.only != "demo":
        print(f"paper rows, random-init backbones under probe heads ({args.probe_train} training slices, "
              f"{args.probe_test} held out + the example files):")
        paper_rows(args.probe_train, args.probe_test)


if __name__ == "__main__":
    main()
