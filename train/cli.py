"""Command line of the training package (``python -m train``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from spinecad.inference.precision import CHOICES as PRECISIONS
from spinecad.models.registry import PROFILES, BackboneError, PretrainedWeightsUnavailable
from train.hub import HubPushError
from train.preflight import PreflightError
from train.rsna import DatasetLayoutError, build_sample_index, format_counts, write_index
from train.split import SplitFileError, make_split, split_summary, write_split

SUBCOMMANDS = ("index", "split", "score", "localizer")

DESCRIPTION = """\
Train and evaluate SpineCAD's six spinal canal stenosis models.

  python -m train --data-dir DIR     train the paper profile on the RSNA 2024 Kaggle folder DIR
  python -m train --demo             write the phantom set and train the six CPU-profile models (minutes on
                                     a laptop CPU) into checkpoints/, the demo set the app ships
  python -m train --manifest-csv F   train on pre-extracted slices listed in F (image_path,study_id,level,severity)
  python -m train --data-dir DIR --dry-run
                                     images found, cache and output sizes, estimated time per model and in total
  python -m train --data-dir DIR --devices cuda:0,cuda:1
                                     one worker per device, each taking the next model (default: every GPU)
  torchrun --nproc-per-node N -m train --data-dir DIR --models vit_b16
                                     one model data-parallel over N GPUs (DistributedDataParallel)

Subcommands (usable alone):
  python -m train index --data-dir DIR --output FILE.csv    the sample index from the CSVs (images optional)
  python -m train split --data-dir DIR --output FILE.csv    the patient-level 65/15/20 split (study_id,split)
  python -m train score --data-dir DIR --predictions F.csv  score a Kaggle-format predictions file (JSON)
  python -m train localizer ...                              train the level localizer (see its --help)

Outputs (--output-dir): one Hub-format checkpoint folder per model (config.json, model.safetensors, README.md),
evaluation/ (predictions, metrics with bootstrap intervals, curves, histories), manifest.json for the app,
index.csv and split.csv (reused by later runs), and .state/ (resume state: rerun the same command after a crash).
Recipe defaults are the paper's: AdamW lr 1e-4, weight decay 0.02, batch 32, 30 epochs (3 with the backbone
frozen, then its last 32 layers unfrozen; head and level embedding train throughout), class-weighted
cross-entropy, flips and rotations, best epoch by validation macro-F1.
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return {"index": _index, "split": _split, "score": _score, "localizer": _localizer}[argv[0]](argv[1:])
        return _train(argv)
    except (DatasetLayoutError, SplitFileError, BackboneError, PretrainedWeightsUnavailable, HubPushError,
            PreflightError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data-dir", type=Path, help="RSNA 2024 Kaggle folder (train.csv, ..., train_images/)")
    source.add_argument("--manifest-csv", type=Path, help="CSV of pre-extracted slices")
    parser.add_argument("--demo", action="store_true",
                        help="phantom data + CPU profile + demo recipe; output defaults to checkpoints/")
    parser.add_argument("--phantom-studies", type=int, default=240, help="studies in the demo's phantom set")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="backbone profile (default: paper; demo: cpu)")
    parser.add_argument("--models", help="comma-separated backbones: family names (vit_b16,swin_b,...), "
                                         "registry names, or hf:<model id>; default: the profile's six")
    parser.add_argument("--output-dir", type=Path, help="default: runs/<profile> (demo: checkpoints)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache") / "slices",
                        help="decoded-slice cache (default: .cache/slices in the current folder)")
    parser.add_argument("--epochs", type=int, help="total epochs (phases keep their proportions)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--no-pretrained", action="store_true", help="random initialisation instead of ImageNet")
    parser.add_argument("--devices", help="comma-separated devices, one worker process each taking the next model "
                                          "(e.g. cuda:0,cuda:1 or cpu,cpu; default: every visible GPU, else cpu)")
    parser.add_argument("--device", default=None,
                        help="one process on one device (cuda, cuda:1, cpu), "
                             "or per model: vit_b16=cuda:0,swin_b=cuda:1")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="autocast precision; auto: bf16 on GPUs that have it, fp16 with loss scaling on older "
                             "GPUs (T4, P100, V100), fp32 on the CPU")
    parser.add_argument("--dry-run", action="store_true",
                        help="print images found, cache and output sizes and a timed estimate; train nothing")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for confidence intervals")
    parser.add_argument("--skip-evaluation", action="store_true",
                        help="train only (e.g. one model per GPU in parallel); evaluate later without it")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="evaluate the checkpoints already in --output-dir (no training): temperatures, "
                             "familiarity statistics and every artefact are written anew")
    parser.add_argument("--push-to-hub", metavar="ORG", help="create/update one model repo per backbone under ORG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _train(argv: list[str]) -> int:
    args = _train_parser().parse_args(argv)
    if not (args.demo or args.data_dir or args.manifest_csv):
        _train_parser().error("give --data-dir, --manifest-csv or --demo")
    from train.run import run

    return run(args)


def _localizer(argv: list[str]) -> int:
    try:
        from train.localizer import main as localizer_main
    except ModuleNotFoundError as error:
        if error.name != "train.localizer":
            raise
        print("error: the localizer training (train/localizer.py) is not part of this installation.", file=sys.stderr)
        return 2
    return localizer_main(argv)


def _index(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m train index",
                                     description="Build the sample index (one row per study and level).")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--no-images", action="store_true", help="use the CSVs only, even if train_images exists")
    args = parser.parse_args(argv)
    index = build_sample_index(args.data_dir, read_images=False if args.no_images else None)
    write_index(index, args.output)
    print(format_counts(index))
    print(f"wrote {len(index.rows)} rows to {args.output}")
    return 0


def _split(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m train split",
                                     description="Patient-level 65/15/20 split, stratified by canal grades.")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    labels = _read_train_csv(args.data_dir)
    split = make_split(labels, seed=args.seed)
    write_split(split, args.output)
    print(split_summary(split, labels).round(2).to_string())
    print(f"wrote {len(split)} studies to {args.output}")
    return 0


def _score(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m train score",
                                     description="Score a Kaggle-format predictions file against train.csv.")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding train.csv")
    parser.add_argument("--predictions", type=Path, required=True, help="row_id,normal_mild,moderate,severe")
    parser.add_argument("--n-boot", type=int, default=0, help="bootstrap resamples for intervals (0: none)")
    args = parser.parse_args(argv)
    from spinecad.evaluation.scoring import ScoringError, load_canal_labels, score_predictions

    try:
        labels = load_canal_labels(args.data_dir / "train.csv")
        result = score_predictions(args.predictions, labels, n_boot=args.n_boot)
    except ScoringError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def _read_train_csv(data_dir: Path) -> pd.DataFrame:
    path = data_dir / "train.csv"
    if not path.exists():
        raise DatasetLayoutError(f"{path} is missing: the split needs the study labels in train.csv.")
    return pd.read_csv(path)
