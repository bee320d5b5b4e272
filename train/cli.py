"""Command line of the training package (``python -m train``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from spinecad.inference.devices import resolve_device
from spinecad.models.registry import PROFILES, BackboneError, BackboneSpec, PretrainedWeightsUnavailable, get_spec
from train.hub import HubPushError
from train.recipe import DEMO, PAPER, Recipe
from train.rsna import DatasetLayoutError, build_sample_index, format_counts, read_manifest_csv, write_index
from train.split import SplitFileError, make_split, split_summary, write_split

SUBCOMMANDS = ("index", "split", "score")

DESCRIPTION = """\
Train and evaluate SpineCAD's six spinal canal stenosis models.

  python -m train --data-dir DIR     train the paper profile on the RSNA 2024 Kaggle folder DIR
  python -m train --demo             write the phantom set and train the six CPU-profile models (minutes on
                                     a laptop CPU) into checkpoints/, the demo set the app ships
  python -m train --manifest-csv F   train on pre-extracted slices listed in F (image_path,study_id,level,severity)

Subcommands (usable alone):
  python -m train index --data-dir DIR --output FILE.csv    the sample index from the CSVs (images optional)
  python -m train split --data-dir DIR --output FILE.csv    the patient-level 65/15/20 split (study_id,split)
  python -m train score --data-dir DIR --predictions F.csv  score a Kaggle-format predictions file (JSON)

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
            return {"index": _index, "split": _split, "score": _score}[argv[0]](argv[1:])
        return _train(argv)
    except (DatasetLayoutError, SplitFileError, BackboneError, PretrainedWeightsUnavailable, HubPushError,
            ValueError) as error:
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
    parser.add_argument("--device", default=None,
                        help="cuda, cuda:1, cpu, or per model: vit_b16=cuda:0,swin_b=cuda:1 (default: cuda if any)")
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
    started = time.perf_counter()
    if not (args.demo or args.data_dir or args.manifest_csv):
        _train_parser().error("give --data-dir, --manifest-csv or --demo")
    profile_name = args.profile or ("cpu" if args.demo else "paper")
    recipe = _recipe(args)
    specs = _specs(args.models, profile_name)
    output_dir = args.output_dir or (Path("checkpoints") if args.demo else Path("runs") / profile_name)
    output_dir.mkdir(parents=True, exist_ok=True)
    devices = _devices(args.device, specs)

    index, facts, title = _load_index(args)
    print(format_counts(index))
    from train.pipeline import prepare_data  # torch-heavy imports only for training

    size = max(spec.input_size for spec in specs)
    data = prepare_data(index, output_dir, args.cache_dir, size, seed=recipe.seed, progress=not args.no_progress)
    from train.loop import TrainingData, train_model

    training = TrainingData(
        train=data.dataset("train"), val=data.dataset("val"),
        facts={**facts, "n_train": int((data.rows["split"] == "train").sum()),
               "n_val": int((data.rows["split"] == "val").sum())},
        fingerprint=data.fingerprint(),
    )
    for spec in specs if not args.evaluate_only else ():
        outcome = train_model(spec, recipe, training, output_dir, device=devices[spec.name],
                              progress=not args.no_progress)
        print(f"[{spec.name}] best epoch {outcome.best_epoch} (validation macro-F1 {outcome.best_score:.3f})")
    if args.skip_evaluation:
        return 0
    from train.evaluate import evaluate_run

    results = evaluate_run(output_dir, data, device=devices[specs[0].name], title=title, demo=args.demo,
                           n_boot=args.n_boot)
    table = pd.DataFrame({key: {k: getattr(v, k) for k in ("accuracy", "macro_f1", "macro_roc_auc")}
                          for key, v in ((key, splits["test"]) for key, splits in results.items())}).T
    print("test split:\n" + table.round(3).to_string())
    if args.push_to_hub:
        from train.hub import push_run

        push_run(output_dir, args.push_to_hub)
    print(f"done in {time.perf_counter() - started:.0f} s; outputs in {output_dir}")
    print(f"serve them: SPINECAD_MANIFEST={(output_dir / 'manifest.json').resolve()} python app.py")
    return 0


def _recipe(args: argparse.Namespace) -> Recipe:
    recipe = DEMO if args.demo else PAPER
    if args.epochs:
        recipe = recipe.with_epochs(args.epochs)
    changes = {name: getattr(args, name) for name in ("batch_size", "lr", "seed") if getattr(args, name) is not None}
    if args.no_pretrained:
        changes["pretrained"] = False
    from dataclasses import replace

    return replace(recipe, **changes)


def _specs(models: str | None, profile_name: str) -> list[BackboneSpec]:
    profile_specs = PROFILES[profile_name]
    if not models:
        return list(profile_specs)
    by_family = {spec.name.removesuffix("-cpu"): spec for spec in profile_specs}
    return [by_family.get(name.strip()) or get_spec(name.strip()) for name in models.split(",") if name.strip()]


def _devices(option: str | None, specs: list[BackboneSpec]) -> dict:
    if not option or "=" not in option:
        device = resolve_device(option)
        return {spec.name: device for spec in specs}
    chosen = dict(pair.split("=", 1) for pair in option.split(","))
    devices = {}
    for spec in specs:
        family = spec.name.removesuffix("-cpu")
        devices[spec.name] = resolve_device(chosen.get(spec.name) or chosen.get(family))
    return devices


def _load_index(args: argparse.Namespace):
    if args.manifest_csv:
        return read_manifest_csv(args.manifest_csv), {"dataset": f"slices listed in {args.manifest_csv.name}"}, \
            "SpineCAD models (pre-extracted slices)"
    if args.demo:
        from train.phantom import write_phantom_dataset

        # One folder per size: a folder written for another --phantom-studies is never silently reused.
        data_dir = args.data_dir or Path(".cache") / f"phantom-demo-{args.phantom_studies}"
        if not (data_dir / "train.csv").exists():
            print(f"writing the phantom dataset ({args.phantom_studies} studies) to {data_dir}")
            write_phantom_dataset(data_dir, n_studies=args.phantom_studies, seed=0)
        facts = {"dataset": "synthetic phantom (RSNA layout)", "demo": True}
        return build_sample_index(data_dir), facts, "Phantom demo set (synthetic data, not for clinical use)"
    return build_sample_index(args.data_dir), {"dataset": "RSNA 2024 lumbar spine (Kaggle)"}, \
        "SpineCAD models (RSNA 2024)"


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
