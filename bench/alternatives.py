"""The obvious alternatives to bf16 eager on the CPU, per paper backbone: torch.compile, ONNX Runtime, int8.

    python bench/alternatives.py                      # the six paper-profile backbones, 224 px, one slice
    python bench/alternatives.py --batch 16           # a series' batch instead of one slice
    python bench/alternatives.py --only vit_b16 --skip onnx

    extra packages (not the Space's): pip install -r bench/requirements.txt   (onnx, onnxscript, onnxruntime)

Per backbone, each alternative computes the pooled features of the same phantom slices:
  fp32      eager, fp32                                            (what agreement is measured against)
  bf16      eager under CPU bf16 autocast                          (the baseline: what the predictor runs)
  compile   torch.compile (inductor) of the backbone under bf16 autocast
  onnx      the fp32 graph exported with torch.onnx, run by ONNX Runtime's CPU provider with all graph optimisations
  chlast    (CNN rows) bf16 eager with the weights and the input in channels-last memory format (the predictor uses
            it on CUDA; adopted on the CPU only where it measures faster here)
  int8      torch.ao dynamic quantisation of every nn.Linear (int8 weights, activations quantised per batch), fp32
            elsewhere; a CNN without Linear layers is unchanged by it and is skipped

For each it prints: the median forward time (ms, interleaved rounds), speed-up over bf16 eager, the one-off cost
before the first result (compile / export + session / quantisation, s; a fresh inductor cache), and max |p - p_fp32|
over every level of held-out slices under a head trained on the backbone's own fp32 features (bench/agreement.py's
probe heads: no trained paper weights here). An alternative is adopted only where it is >= 1.2x faster than the
row's own eager precision (bf16 eager; fp32 eager for a row the registry keeps in fp32), within the 0.02 agreement
bound, and costs no more before the first result.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from agreement import BOUND, features, phantom_slices, probabilities, train_probe_head  # bench/agreement.py
from timing import interleaved_medians  # bench/timing.py

from spinecad.inference.precision import BF16, FP32, cpu_has_native_bf16
from spinecad.models.model import SpineCADModel
from spinecad.models.preprocess import slice_to_tensor
from spinecad.models.registry import PAPER_PROFILE, cpu_bf16_allowed

SPEEDUP = 1.2  # the bar: adopt only at >= 1.2x over bf16 eager
# Channels-last is a memory layout, not another runtime (converting at load costs a fraction of a second): it is
# taken wherever it measures faster beyond noise.
CHANNELS_LAST_SPEEDUP = 1.05
ALTERNATIVES = ("compile", "onnx", "int8", "chlast")

Forward = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, S, S) -> pooled features (B, D), fp32


def eager(model: SpineCADModel, precision) -> tuple[Forward, float]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), precision.autocast("cpu"):
            return model.features(x).float()
    return run, 0.0


def compiled(model: SpineCADModel, example: torch.Tensor) -> tuple[Forward, float]:
    """torch.compile under bf16 autocast; the one-off cost is the first call (tracing + inductor's C++ build)."""
    backbone = torch.compile(model.backbone, dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), BF16.autocast("cpu"):
            return backbone(x).float()

    start = time.perf_counter()
    run(example)
    return run, time.perf_counter() - start


def onnx_runtime(model: SpineCADModel, example: torch.Tensor, folder: Path) -> tuple[Forward, float]:
    """Export the fp32 backbone (torch.onnx, dynamo exporter) and open an ONNX Runtime session on it."""
    import onnxruntime

    start = time.perf_counter()
    path = folder / f"{model.config.backbone['name']}.onnx"
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:  # a batch dimension of any size, as the predictor needs
            torch.onnx.export(model.backbone, (example,), str(path), input_names=["images"],
                              output_names=["features"], dynamo=True,
                              dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=64)}})
        except Exception:  # noqa: BLE001 - torch.export refuses some models a dynamic batch: export this one
            print(f"{model.config.backbone['name']}: exported with a fixed batch of {len(example)}",
                  file=sys.stderr)
            torch.onnx.export(model.backbone, (example,), str(path), input_names=["images"],
                              output_names=["features"], dynamo=True)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"images": x.numpy()})[0]).float()

    run(example)
    return run, time.perf_counter() - start


def channels_last(model: SpineCADModel, example: torch.Tensor) -> tuple[Forward, float] | None:
    """bf16 eager on a channels-last copy of a CNN (None for a row the registry does not mark ``channels_last``)."""
    if not model.config.backbone_spec.channels_last:
        return None
    start = time.perf_counter()
    copy_ = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), BF16.autocast("cpu"):
            return copy_.features(x.contiguous(memory_format=torch.channels_last)).float()

    run(example)
    return run, time.perf_counter() - start


def int8_dynamic(model: SpineCADModel, example: torch.Tensor) -> tuple[Forward, float] | None:
    """Every nn.Linear as a dynamically quantised int8 Linear (fbgemm / x86); None when there is none."""
    if not any(isinstance(m, torch.nn.Linear) for m in model.backbone.modules()):
        return None
    from torch.ao.quantization import quantize_dynamic

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        backbone = quantize_dynamic(model.backbone, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return backbone(x).float()

    run(example)
    return run, time.perf_counter() - start


def agreement(model: SpineCADModel, forward: Forward, batches: list[torch.Tensor], exact: torch.Tensor) -> float:
    """max |p - p_fp32| over every level and held-out slice, under the model's probe head."""
    feats = torch.cat([forward(x) for x in batches])
    with torch.inference_mode():
        return (probabilities(model, feats) - probabilities(model, exact)).abs().max().item()


def judge(speedup: float, dp: float, one_off: float, bar: float) -> str:
    """ADOPT, or why not: slower than the bar, outside the agreement bound, or a cost before the first result."""
    reasons = []
    if speedup < bar:
        reasons.append(f"{speedup:.2f}x < {bar}x")
    if dp > BOUND:
        reasons.append(f"|dp| > {BOUND}")
    if one_off > 0:
        reasons.append(f"+{one_off:.1f} s before the first result")
    return "not adopted: " + ", ".join(reasons) if reasons else "ADOPT"


def bench_row(spec, args: argparse.Namespace, train_slices: list, grades: list[int], test_slices: list,
              folder: Path) -> list[str]:
    """Time and check every alternative on one paper backbone; prints its rows, returns what it adopts."""
    torch.manual_seed(0)
    model = SpineCADModel.build(spec.name).eval()
    train_probe_head(model, features(model, train_slices, FP32), grades)
    batches = [torch.cat([slice_to_tensor(p, model.data_config) for p in test_slices[i:i + args.batch]])
               for i in range(0, len(test_slices), args.batch)]
    example = batches[0]
    variants: dict[str, tuple[Forward, float]] = {"fp32": eager(model, FP32), "bf16": eager(model, BF16)}
    # The reference: fp32 eager on the same batches (a random-init EfficientNetV2's fp32 features already differ
    # between a batch of 1 and of 10, through other kernels; that is not what an alternative is judged on).
    exact = torch.cat([variants["fp32"][0](x) for x in batches])
    problems: dict[str, str] = {}
    builders = {"compile": lambda: compiled(model, example), "onnx": lambda: onnx_runtime(model, example, folder),
                "int8": lambda: int8_dynamic(model, example), "chlast": lambda: channels_last(model, example)}
    for name in ALTERNATIVES:
        if name in args.skip:
            continue
        try:
            built = builders[name]()
        except Exception as error:  # noqa: BLE001 - a bench reports any failure of an alternative and goes on
            first_line = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines()[0][:90]  # no terminal colours
            problems[name] = f"failed: {type(error).__name__}: {first_line}"
            continue
        if built is None and name == "int8":
            problems[name] = "no nn.Linear to quantise: unchanged"
        elif built is None:
            continue  # channels-last: not a CNN row
        else:
            variants[name] = built
    medians = interleaved_medians({name: (lambda f=f: f(example)) for name, (f, _) in variants.items()},
                                  args.repeats)
    # The bar is the row's own eager precision: bf16 where its registry row allows it, else fp32 (EfficientNetV2-M).
    own = "bf16" if cpu_bf16_allowed(spec) else "fp32"
    base, adopted = medians[own], []
    for name, (forward, one_off) in variants.items():
        dp = agreement(model, forward, batches, exact)
        verdict = ""
        if name in ALTERNATIVES:
            verdict = judge(base / medians[name], dp, one_off if name != "chlast" else 0.0,
                            CHANNELS_LAST_SPEEDUP if name == "chlast" else SPEEDUP)
            if verdict == "ADOPT":
                adopted.append(f"{spec.name} {name}")
        print(f"{spec.name:18s} {name:8s} {medians[name]:9.1f} {medians['bf16'] / medians[name]:7.2f} "
              f"{base / medians[name]:7.2f} {one_off:9.1f} {dp:8.4f}  {verdict}{'  <- its own' * (name == own)}",
              flush=True)
    for name, problem in problems.items():
        print(f"{spec.name:18s} {name:8s} {'':9s} {'':7s} {'':7s} {'':9s} {'':8s}  {problem}", flush=True)
    return adopted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="paper rows to run (default: all six)")
    parser.add_argument("--skip", nargs="*", default=[], choices=ALTERNATIVES)
    parser.add_argument("--batch", type=int, default=1, help="slices per forward call (1: the Predict tab)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--probe-train", type=int, default=60)
    parser.add_argument("--probe-test", type=int, default=20)
    parser.add_argument("--inductor-cache", type=Path, help="reuse this inductor cache (default: a fresh one)")
    args = parser.parse_args()
    torch._logging.set_logs(all=logging.CRITICAL)  # a refused dynamic batch is reported below, not as a traceback
    if not cpu_has_native_bf16():
        print("this CPU has no native bf16: bf16 eager (the baseline) would be emulated; run this where it is native")
    # A fresh inductor cache unless one is given: the compile column is then what a new Space replica pays.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.inductor_cache or tempfile.mkdtemp(prefix="spinecad-inductor-"))
    train_slices, grades = phantom_slices(args.probe_train, seed=21)
    test_slices = phantom_slices(args.probe_test, seed=22)[0]
    specs = [s for s in PAPER_PROFILE if not args.only or s.name in args.only]
    print(f"{len(specs)} paper backbones, batch {args.batch}, {torch.get_num_threads()} threads, median of "
          f"{args.repeats}; agreement on {len(test_slices)} held-out slices under probe heads "
          f"({len(train_slices)} training slices); inductor cache {os.environ['TORCHINDUCTOR_CACHE_DIR']}")
    print(f"{'backbone':18s} {'variant':8s} {'ms':>9s} {'bf16/x':>7s} {'own/x':>7s} {'one-off s':>9s} "
          f"{'max|dp|':>8s}  verdict (against the row's own eager precision)")
    adopted = []
    with tempfile.TemporaryDirectory(prefix="spinecad-onnx-") as folder:
        for spec in specs:
            adopted += bench_row(spec, args, train_slices, grades, test_slices, Path(folder))
    print("adopted: " + (", ".join(adopted) if adopted else "none (bf16 eager stays)"))


if __name__ == "__main__":
    main()
