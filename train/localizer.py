"""``python -m train localizer``: the disc-level localiser, from the canal points to an evaluated checkpoint.

    python -m train localizer --demo                  phantom (the graders' 240 studies and split), CPU profile,
                                                      into checkpoints/localizers/localizer-cpu (beside the
                                                      graders, in a folder their evaluation does not read) and
                                                      checkpoints/evaluation/localizers
    python -m train localizer --data-dir DIR          the RSNA 2024 Kaggle folder, paper profile, runs/localizer
    python -m train localizer --data-dir DIR --labels-only    count the canal points (images not needed)

The split is the graders' (``split.csv`` in the output folder, made there when absent): a study is in the same
split for both. Rerun the same command after a kill: training resumes from its last finished epoch.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from spinecad.evaluation.artefacts import SCHEMA_VERSION, LocalizerDocument, SliceRule
from spinecad.evaluation.localizer import errors_by_level, point_rows
from spinecad.evaluation.store import write_localizer_evaluation, write_localizer_example
from spinecad.imaging import ImageReadError, read_slice
from spinecad.inference.devices import resolve_device
from spinecad.inference.localizing import Localizer
from spinecad.inference.manifest import ManifestEntry, ManifestError, read_manifest, write_manifest
from spinecad.models.localizer import LOCALIZER_BACKBONES, LocalizerConfig, LocalizerModel
from spinecad.models.registry import BackboneError, PretrainedWeightsUnavailable
from spinecad.study.geometry import nearest_slice
from train.cache import build_cache
from train.localizer_data import StudySample, canal_labels, format_label_counts, study_samples
from train.localizer_train import DEMO_RECIPE, PAPER_RECIPE, PointSet, predict, train_localizer
from train.loop import save_checkpoint
from train.rsna import DatasetLayoutError
from train.split import SplitFileError, load_or_make_split

DECODER_CHANNELS = {"paper": 64, "cpu": 32}
GOOD_POINT_MM = 5.0  # a validation point this close counts as found when the confidence threshold is set
N_EXAMPLES = 4


def main(argv: list[str]) -> int:
    """Entry point of the subcommand; returns the process exit code."""
    args = _parser().parse_args(argv)
    if not (args.demo or args.data_dir):
        _parser().error("give --data-dir or --demo")
    try:
        return _run(args)
    except (DatasetLayoutError, SplitFileError, BackboneError, PretrainedWeightsUnavailable, ManifestError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train localizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="RSNA 2024 Kaggle folder (CSVs and train_images/)")
    parser.add_argument("--demo", action="store_true", help="phantom data, CPU profile, output checkpoints/")
    parser.add_argument("--phantom-studies", type=int, default=240, help="studies in the demo's phantom set")
    parser.add_argument("--labels-only", action="store_true", help="count the canal points and stop")
    parser.add_argument("--profile", choices=sorted(LOCALIZER_BACKBONES), help="default: paper; demo: cpu")
    parser.add_argument("--output-dir", type=Path, help="default: runs/localizer (demo: checkpoints)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache") / "slices")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--no-pretrained", action="store_true", help="random initialisation instead of ImageNet")
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda if any)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate the checkpoint already there")
    return parser


def _run(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or Path(".cache") / f"phantom-demo-{args.phantom_studies}"
    if args.demo and not (data_dir / "train.csv").exists():
        from train.phantom import write_phantom_dataset

        print(f"writing the phantom dataset ({args.phantom_studies} studies) to {data_dir}")
        write_phantom_dataset(data_dir, n_studies=args.phantom_studies, seed=0)
    labels = canal_labels(data_dir)
    print(format_label_counts(labels))
    if args.labels_only:
        return 0
    profile = args.profile or ("cpu" if args.demo else "paper")
    recipe = DEMO_RECIPE if args.demo else PAPER_RECIPE
    changes = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "seed") if getattr(args, k) is not None}
    recipe = replace(recipe, **changes, **({"pretrained": False} if args.no_pretrained else {}))
    output_dir = args.output_dir or (Path("checkpoints") if args.demo else Path("runs") / "localizer")
    output_dir.mkdir(parents=True, exist_ok=True)
    key = f"localizer-{profile}"
    spec = LOCALIZER_BACKBONES[profile]
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    if not (data_dir / "train.csv").is_file():
        raise DatasetLayoutError(f"{data_dir / 'train.csv'} is missing: the split shared with the graders needs it.")
    split = load_or_make_split(output_dir / "split.csv", pd.read_csv(data_dir / "train.csv"), seed=recipe.seed)
    by_split = dict(zip(split["study_id"].astype(int), split["split"], strict=True))
    samples, problems = study_samples(data_dir, labels, set(by_split))
    for problem in problems[:10]:
        print(f"skipped: {problem}")
    print(f"studies with a readable labelled slice: {len(samples)} (skipped {len(problems)})")
    for name in ("train", "val", "test"):
        if not any(by_split.get(sample.study_id) == name for sample in samples):
            raise DatasetLayoutError(f"no {name} study has a readable labelled sagittal slice in {data_dir}/"
                                     "train_images: training needs the images (--labels-only counts without them).")
    sets = _point_sets(samples, by_split, args.cache_dir, spec.input_size)

    checkpoint_dir = output_dir / "localizers" / key  # the graders' evaluation loads every folder beside theirs
    if args.evaluate_only:
        model = LocalizerModel.load(checkpoint_dir).to(device)
    else:
        config = LocalizerConfig(backbone=spec.to_dict(), decoder_channels=DECODER_CHANNELS[profile])
        facts = {"dataset": "synthetic phantom (RSNA layout)" if args.demo else "RSNA 2024 lumbar spine (Kaggle)",
                 "demo": bool(args.demo), "n_train": len(sets["train"][1]), "n_val": len(sets["val"][1])}
        model, _ = train_localizer(config, recipe, sets["train"][1], sets["val"][1], checkpoint_dir,
                                   output_dir / ".state" / f"{key}.safetensors", device=device, facts=facts)
    results = evaluate(model, sets, output_dir / "evaluation", key, device)
    save_checkpoint(model, checkpoint_dir, metrics=_card_metrics(results["test"]))
    _list_in_manifest(output_dir, ManifestEntry(key=key, name="Disc-level localiser", path=f"localizers/{key}"))
    test = results["test"].overall
    print(f"test split: mean point error {test.mean_mm:.2f} mm (p90 {test.p90_mm:.2f}), same axial slice "
          f"{100 * (test.same_axial or 0):.1f}% of {test.n_axial} levels, neighbour mix-ups {test.neighbour_mixups} "
          f"of {test.n}, below the confidence threshold {test.below_min_confidence}")
    return 0


def _point_sets(samples: list[StudySample], by_split: dict, cache_dir: Path, size: int) -> dict:
    """Per split: its samples and their PointSet (cached square slices, points scaled to the square)."""
    cache = build_cache([str(sample.file) for sample in samples], cache_dir, size)
    position = cache.position()
    sets = {}
    for name in ("train", "val", "test"):
        chosen = [s for s in samples if by_split.get(s.study_id) == name and str(s.file) in position]
        images = torch.from_numpy(np.stack([cache.images[position[str(s.file)]] for s in chosen]))[:, None]
        scale = np.array([[[size / s.plane.shape[1], size / s.plane.shape[0]]] for s in chosen])
        points = torch.from_numpy((np.stack([s.points for s in chosen]) + 0.5) * scale - 0.5)
        sets[name] = (chosen, PointSet(images, points))
    return sets


def _axial_instance(sample: StudySample, point: np.ndarray) -> tuple[int, int] | None:
    """The (series, instance) of the study's axial slice nearest a point of its labelled sagittal slice."""
    if not np.isfinite(point).all() or not sample.axial:
        return None
    nearest = nearest_slice([plane for _, _, plane in sample.axial], sample.plane.to_patient(*point))
    return None if nearest is None else sample.axial[nearest.index][:2]


def evaluate(model: LocalizerModel, sets: dict, root: Path, key: str, device: torch.device) -> dict:
    """Set the confidence threshold on validation, then write points, measures and examples for val and test."""
    found = {name: predict(model, data, device) for name, (_, data) in sets.items() if name != "train"}
    model.config.min_confidence = _threshold(sets["val"], *found["val"])
    localizer = Localizer(model)
    results = {}
    for name in ("val", "test"):
        samples, data = sets[name]
        rows = []
        for sample, points, confidence in zip(samples, *found[name], strict=True):
            size = data.images.shape[-1]
            scale = np.array([sample.plane.shape[1] / size, sample.plane.shape[0] / size])
            native = (points + 0.5) * scale - 0.5  # back to pixels of the labelled slice
            same = [None if _axial_instance(sample, t) is None else _axial_instance(sample, t) ==
                    _axial_instance(sample, p) for t, p in zip(sample.points, native, strict=True)]
            rows += point_rows(sample.study_id, sample.points, native, confidence, sample.plane.spacing, same)
        table = pd.DataFrame(rows)
        overall, per_level = errors_by_level(table, model.config.min_confidence)
        examples = [s.study_id for s in samples[:N_EXAMPLES]] if name == "test" else []
        for sample in samples[:len(examples)]:
            try:
                write_localizer_example(root, key, name, sample.study_id, read_slice(sample.file).pixels)
            except ImageReadError:
                examples.remove(sample.study_id)
        document = LocalizerDocument(schema_version=SCHEMA_VERSION, model_key=key, split=name,
                                     min_confidence=model.config.min_confidence, overall=overall,
                                     per_level=per_level, slice_rule=_slice_rule(localizer, samples),
                                     examples=examples)
        write_localizer_evaluation(root, key, name, table, document)
        results[name] = document
    return results


def _threshold(val: tuple, found: np.ndarray, confidence: np.ndarray) -> float:
    """The confidence below which a level is left unplaced: the 1st percentile of the validation points found
    within GOOD_POINT_MM, so at most 1 in 100 found levels is given up; 0.05 below it keeps a margin."""
    samples, data = val
    spacing = np.array([[s.plane.spacing[1] * s.plane.shape[1], s.plane.spacing[0] * s.plane.shape[0]]
                        for s in samples])[:, None, :] / data.images.shape[-1]
    error = np.linalg.norm((found - data.points.numpy()) * spacing, axis=-1)
    good = confidence[np.isfinite(error) & (error <= GOOD_POINT_MM)]
    return round(max(0.0, float(np.percentile(good, 1)) - 0.05), 3) if good.size else 0.3


def _slice_rule(localizer: Localizer, samples: list[StudySample]) -> SliceRule | None:
    """How often ``choose_slice`` on the position-ordered series picks the labelled instance, or its neighbour."""
    hits = []
    for sample in samples:
        instances = [instance for instance, _ in sample.sagittal]
        if len(instances) < 2 or sample.instance not in instances:
            continue
        hits.append(abs(localizer.choose_slice(instances) - instances.index(sample.instance)))
    if not hits:
        return None
    offsets = np.array(hits)
    return SliceRule(rule="middle slice of the series ordered by position", n_studies=len(hits),
                     exact=float((offsets == 0).mean()), within_one=float((offsets <= 1).mean()))


def _card_metrics(document: LocalizerDocument) -> dict:
    overall = document.overall
    return {"mean point error (mm)": f"{overall.mean_mm:.2f}", "90th percentile (mm)": f"{overall.p90_mm:.2f}",
            "same axial slice": f"{100 * (overall.same_axial or 0):.1f}%",
            "neighbour mix-ups": f"{overall.neighbour_mixups} of {overall.n}"}


def _list_in_manifest(output_dir: Path, entry: ManifestEntry) -> None:
    """Name the localiser in the output folder's manifest; without one (no graders there yet), say what to add."""
    path = output_dir / "manifest.json"
    if not path.is_file():
        print(f"no {path}: add \"localizer\": {{\"key\": \"{entry.key}\", \"name\": \"{entry.name}\", "
              f"\"path\": \"{entry.path}\"}} to the manifest that serves the graders")
        return
    write_manifest(replace(read_manifest(path), localizer=entry), path)
