"""One training run from parsed arguments: checks, index, cache, training (one process, one worker per device, or
one rank of a torchrun job), evaluation, Hub push."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from spinecad.inference.devices import resolve_device
from spinecad.inference.precision import choose_precision
from spinecad.models.registry import PROFILES, BackboneSpec, get_spec
from train import distributed, preflight
from train.recipe import DEMO, PAPER, Recipe
from train.rsna import build_sample_index, format_counts, read_manifest_csv


def run(args: argparse.Namespace) -> int:
    """Train and evaluate as ``args`` say; returns the exit code (1 when a model failed)."""
    started = time.perf_counter()
    ranks = distributed.from_environment()
    profile_name = args.profile or ("cpu" if args.demo else "paper")
    recipe = _recipe(args)
    specs = _specs(args.models, profile_name)
    output_dir = args.output_dir or (Path("checkpoints") if args.demo else Path("runs") / profile_name)
    forced = None if args.precision == "auto" else args.precision

    # Every check that can fail comes before anything is written or trained.
    if args.data_dir and not args.demo:
        preflight.check_data_dir(args.data_dir)
    if ranks is not None:
        if args.devices or args.device:
            raise preflight.PreflightError("Under torchrun each process takes its own device (cuda:LOCAL_RANK, or "
                                           "the CPU); leave out --devices and --device.")
        device = distributed.start(ranks)
        devices, workers = {spec.name: device for spec in specs}, [device]
    elif args.devices and args.device:
        raise preflight.PreflightError("Give --devices (one worker per device) or --device (one process), not both.")
    elif args.device:
        devices = _devices(args.device, specs)
        workers = [devices[specs[0].name]]
    else:
        workers = preflight.parse_devices(args.devices)
        devices = {spec.name: workers[0] for spec in specs}
    precisions = {name: choose_precision(device, training=True, forced=forced) for name, device in devices.items()}
    for device in workers:  # a precision a worker's device cannot run is refused here, not in the worker
        choose_precision(device, training=True, forced=forced)
    writer = ranks is None or ranks.writer
    log = print if writer else _silent
    if not args.dry_run:
        preflight.check_writable(output_dir, "output folder")
        preflight.check_writable(args.cache_dir, "cache folder")

    index, facts, title = _load_index(args)
    log(format_counts(index))
    size = max(spec.input_size for spec in specs)
    if args.dry_run:
        from train.plan import dry_run

        dry_run(index, specs, recipe, output_dir=output_dir, cache_dir=args.cache_dir, device=workers[0],
                precision=precisions[specs[0].name], workers=len(workers))
        return 0
    if writer:
        _check_space(index, specs, recipe, output_dir, args.cache_dir, size)

    from train.loop import TrainingData, train_model
    from train.pipeline import prepare_data  # torch-heavy imports only for training

    if not writer:
        distributed.barrier()  # rank 0 writes the index, the split and the cache first
    data = prepare_data(index, output_dir, args.cache_dir, size, seed=recipe.seed, writer=writer,
                        progress=writer and not args.no_progress, log=log)
    if writer and ranks is not None:
        distributed.barrier()
    training = TrainingData(
        train=data.dataset("train"), val=data.dataset("val"),
        facts={**facts, "n_train": int((data.rows["split"] == "train").sum()),
               "n_val": int((data.rows["split"] == "val").sum())},
        fingerprint=data.fingerprint(),
    )
    failures = []
    if args.evaluate_only:
        pass
    elif len(workers) > 1:
        from train.parallel import train_on_devices

        failures = train_on_devices(specs, recipe, training, output_dir, workers, forced_precision=forced)
    else:
        for spec in specs:
            outcome = train_model(spec, recipe, training, output_dir, device=devices[spec.name],
                                  precision=precisions[spec.name], ranks=ranks, progress=not args.no_progress)
            log(f"[{spec.name}] best epoch {outcome.best_epoch} (validation macro-F1 {outcome.best_score:.3f})")
    if not writer:
        distributed.stop()
        return 0
    if not args.skip_evaluation:
        _evaluate(args, output_dir, data, workers[0], title, [failure.model for failure in failures])
    distributed.stop()
    for failure in failures:
        print(f"error: {failure.model} failed on {failure.device}: {failure.reason}", file=sys.stderr)
    if failures:
        print(f"error: {len(failures)} of {len(specs)} models failed (the others finished and were evaluated); "
              "rerun the same command to resume them.", file=sys.stderr)
        return 1
    print(f"done in {time.perf_counter() - started:.0f} s; outputs in {output_dir}")
    if not args.skip_evaluation:
        print(f"serve them: SPINECAD_MANIFEST={(output_dir / 'manifest.json').resolve()} python app.py")
    return 0


def _evaluate(args, output_dir: Path, data, device: torch.device, title: str, failed: list[str]) -> None:
    from train.evaluate import evaluate_run

    precision = choose_precision(device, training=True, forced=None if args.precision == "auto" else args.precision)
    results = evaluate_run(output_dir, data, device=device, title=title, demo=args.demo, n_boot=args.n_boot,
                           exclude=failed, precision=precision)
    table = pd.DataFrame({key: {k: getattr(v, k) for k in ("accuracy", "macro_f1", "macro_roc_auc")}
                          for key, v in ((key, splits["test"]) for key, splits in results.items())}).T
    print("test split:\n" + table.round(3).to_string())
    if args.push_to_hub:
        from train.hub import push_run

        push_run(output_dir, args.push_to_hub)


def _check_space(index, specs, recipe, output_dir: Path, cache_dir: Path, size: int) -> None:
    from train.cache import cache_key

    usable = index.rows[index.rows["usable"]]
    files = sorted({str(index.image_file(path)) for path in usable["image_path"]})
    cached = (cache_dir / f"slices-{size}-{cache_key(files, size)}.json").exists()
    preflight.check_space([(cache_dir, 0 if cached else preflight.cache_bytes(len(files), size), "cache"),
                           (output_dir, preflight.output_bytes(specs, recipe.head), "checkpoints and states")])


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def _recipe(args: argparse.Namespace) -> Recipe:
    recipe = DEMO if args.demo else PAPER
    if args.epochs:
        recipe = recipe.with_epochs(args.epochs)
    changes = {name: getattr(args, name) for name in ("batch_size", "lr", "seed") if getattr(args, name) is not None}
    if args.no_pretrained:
        changes["pretrained"] = False
    return replace(recipe, **changes)


def _specs(models: str | None, profile_name: str) -> list[BackboneSpec]:
    profile_specs = PROFILES[profile_name]
    if not models:
        return list(profile_specs)
    by_family = {spec.name.removesuffix("-cpu"): spec for spec in profile_specs}
    return [by_family.get(name.strip()) or get_spec(name.strip()) for name in models.split(",") if name.strip()]


def _devices(option: str | None, specs: list[BackboneSpec]) -> dict:
    """``--device``: one device for every model, or per model (vit_b16=cuda:0,swin_b=cuda:1)."""
    if not option or "=" not in option:
        device = resolve_device(option)
        preflight.check_device(device, "--device")
        return {spec.name: device for spec in specs}
    chosen = dict(pair.split("=", 1) for pair in option.split(","))
    devices = {}
    for spec in specs:
        family = spec.name.removesuffix("-cpu")
        devices[spec.name] = resolve_device(chosen.get(spec.name) or chosen.get(family))
        preflight.check_device(devices[spec.name], "--device")
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
