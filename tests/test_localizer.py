"""The disc-level localiser: labels from the real CSVs, augmentation, measures, the Hub format, the manifest entry,
the study-mode API and the committed demo localiser on fresh phantom studies (the issue's acceptance)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import gaussian_filter

from spinecad.evaluation import store
from spinecad.evaluation.localizer import errors_by_level, point_rows
from spinecad.imaging import read_slice
from spinecad.inference.localizing import NO_SAGITTAL, NOT_LISTED, ONE_SLICE, LocalizerInputError, load_localizer
from spinecad.inference.manifest import ManifestEntry, ManifestError, read_manifest, write_manifest
from spinecad.labels import LEVELS
from spinecad.models.localizer import LOCALIZER_BACKBONES, LocalizerConfig, LocalizerModel
from spinecad.models.model import CheckpointError
from spinecad.study.geometry import Plane, nearest_slice
from tests.conftest import DEMO_MANIFEST, REPO
from train.localizer_data import canal_labels, read_plane
from train.localizer_train import DEMO_RECIPE, augment
from train.phantom import write_phantom_dataset

EVALUATION = REPO / "checkpoints" / "evaluation"


@pytest.fixture(scope="module")
def demo_localizer():
    localizer, problem = load_localizer(read_manifest(DEMO_MANIFEST))
    assert localizer is not None, problem
    return localizer


@pytest.fixture(scope="module")
def fresh_phantom(tmp_path_factory):
    """Phantom studies the demo localiser never saw (another seed than the demo set's)."""
    return write_phantom_dataset(tmp_path_factory.mktemp("fresh") / "phantom", n_studies=20, seed=7)


# ---- Labels --------------------------------------------------------------------------------------------------

def test_real_csvs_count_studies_with_all_some_or_no_canal_points(rsna_dir, capsys, tmp_path):
    from train.localizer import main

    counts = canal_labels(rsna_dir).counts
    assert counts["all_five"] + counts["some"] + counts["none"] == counts["n_studies"] == 1975
    assert counts["all_five"] >= 1900 and counts["n_points"] >= 5 * counts["all_five"]
    assert 0.5 < counts["levels_on_modal_instance"] <= counts["levels_within_one_of_modal"] <= 1.0
    assert main(["--data-dir", str(rsna_dir), "--labels-only"]) == 0
    printed = capsys.readouterr().out
    assert f"all five canal points on a sagittal series {counts['all_five']}, some {counts['some']}" in printed
    # Training needs the images: without them it stops with a message, not a traceback.
    assert main(["--data-dir", str(rsna_dir), "--output-dir", str(tmp_path), "--no-pretrained"]) == 2
    assert "training needs the images" in capsys.readouterr().err


def test_phantom_labels_follow_its_scenarios(fresh_phantom):
    labels = canal_labels(fresh_phantom.out_dir)
    # Studies 7 and 17 drop one canal point ("no_points_no_canal_point"); every other study has all five.
    assert (labels.counts["all_five"], labels.counts["some"], labels.counts["none"]) == (18, 2, 0)
    assert labels.counts["levels_on_modal_instance"] == 1.0


# ---- Augmentation and measures -------------------------------------------------------------------------------

def test_augmentation_moves_points_with_the_pixels():
    size, points = 96, torch.tensor([[20.0, 30.0], [70.0, 50.0], [48.0, 48.0], [15.0, 75.0], [80.0, 12.0]])
    images = np.zeros((6, 1, size, size), np.float32)
    for x, y in points.numpy():
        images[:, 0, int(y), int(x)] = 1.0
    images = torch.from_numpy(gaussian_filter(images, (0, 0, 1.5, 1.5)) * 40)
    moved, mapped = augment(images, points.expand(6, -1, -1), DEMO_RECIPE.__class__(gamma_range=0.0),
                            torch.Generator().manual_seed(3))
    assert not torch.allclose(mapped, points.expand(6, -1, -1))
    grid_y, grid_x = np.mgrid[0:size, 0:size]
    for sample in range(6):
        for x, y in mapped[sample].numpy():
            near = ((grid_x - x) ** 2 + (grid_y - y) ** 2) <= 16
            weights = moved[sample, 0].numpy() * near
            centre = np.array([(weights * grid_x).sum(), (weights * grid_y).sum()]) / weights.sum()
            assert np.hypot(*(centre - (x, y))) < 0.35  # the dot's centre moved where its point did


def test_point_measures_use_pixel_spacing_and_count_neighbour_mixups():
    truth = np.array([[100.0, 50.0], [100.0, 80.0], [100.0, 110.0], [np.nan, np.nan], [100.0, 170.0]])
    found = truth.copy()
    found[0] = (103.0, 54.0)  # 3 columns at 0.5 mm and 4 rows at 1 mm: 4.27 mm off
    found[1] = (100.0, 108.0)  # on L3/L4's point: a neighbour mix-up
    found[4] = (100.0, 52.0)  # on L1/L2's point: wrong, but not a neighbour
    rows = pd.DataFrame(point_rows(5, truth, found, np.full(5, 0.8), (1.0, 0.5), [True, False, True, None, None]))
    assert list(rows["level"]) == ["L1/L2", "L2/L3", "L3/L4", "L5/S1"]
    assert rows["error_mm"].iloc[0] == pytest.approx(np.hypot(1.5, 4.0))
    assert list(rows["neighbour_mixup"]) == [False, True, False, False]
    overall, per_level = errors_by_level(rows, min_confidence=0.9)
    assert (overall.n, overall.neighbour_mixups, overall.n_axial, overall.below_min_confidence) == (4, 1, 3, 4)
    assert overall.same_axial == pytest.approx(2 / 3) and "L4/L5" not in per_level


# ---- Checkpoint format and the manifest ----------------------------------------------------------------------

def tiny_config() -> LocalizerConfig:
    spec = LOCALIZER_BACKBONES["cpu"]
    return LocalizerConfig(backbone={**spec.to_dict(), "input_size": 64}, decoder_channels=8)


@pytest.mark.parametrize("profile", sorted(LOCALIZER_BACKBONES))
def test_each_profile_builds_one_map_per_level_at_a_quarter_of_the_input(profile):
    spec = LOCALIZER_BACKBONES[profile]
    config = LocalizerConfig(backbone=spec.to_dict(), decoder_channels=8)
    model = LocalizerModel(LocalizerConfig.from_dict(json.loads(json.dumps(config.to_dict())))).eval()
    with torch.no_grad():
        maps = model(torch.zeros(1, 3, 96, 96))
    assert maps.shape == (1, len(LEVELS), 24, 24)
    assert model.data_config.input_size == spec.input_size and (profile == "cpu") == (spec.pretrained_tag is None)


def test_checkpoint_round_trip_is_strict_and_safetensors_only(tmp_path):
    torch.manual_seed(0)
    model = LocalizerModel(tiny_config()).eval()
    model.save_pretrained(tmp_path / "ok")
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "disc-level localiser" in (tmp_path / "ok" / "README.md").read_text()
    loaded = LocalizerModel.load(tmp_path / "ok")
    probe = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(probe), loaded(probe))

    cut = shutil.copytree(tmp_path / "ok", tmp_path / "cut")
    (cut / "model.safetensors").write_bytes((cut / "model.safetensors").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        LocalizerModel.load(cut)
    wider = shutil.copytree(tmp_path / "ok", tmp_path / "wider")
    config = json.loads((wider / "config.json").read_text())
    (wider / "config.json").write_text(json.dumps({**config, "decoder_channels": 16}))
    with pytest.raises(CheckpointError, match="wrong shape"):
        LocalizerModel.load(wider)
    (wider / "config.json").write_text(json.dumps({**config, "format": "spinecad-model/1"}))
    with pytest.raises(CheckpointError, match="a localiser has"):
        LocalizerModel.load(wider)
    pickled = shutil.copytree(tmp_path / "ok", tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only safetensors"):
        LocalizerModel.load(pickled)


def test_manifest_localizer_entry_is_read_kept_and_failures_are_said(tmp_path):
    manifest = json.loads(DEMO_MANIFEST.read_text())
    manifest["models"] = [{**entry, "path": str(DEMO_MANIFEST.parent / entry["path"])}
                          for entry in manifest["models"]]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({**manifest, "localizer": {"key": "loc", "name": "Loc", "path": "missing"}}))
    parsed = read_manifest(path)
    assert parsed.localizer == ManifestEntry(key="loc", name="Loc", path="missing")
    localizer, problem = load_localizer(parsed)
    assert localizer is None and "could not be loaded" in problem and "missing" in problem

    # The graders' training rewrites the manifest without a localiser: the one listed stays.
    write_manifest(parsed.__class__(models=parsed.models, title="retrained"), path)
    assert read_manifest(path).localizer == parsed.localizer and read_manifest(path).title == "retrained"

    assert load_localizer(parsed.__class__(models=parsed.models)) == (None, NOT_LISTED)
    path.write_text(json.dumps({**manifest, "localizer": {"key": "loc", "name": "Loc", "path": "x", "temp": 1}}))
    with pytest.raises(ManifestError, match="the localizer has unknown fields: temp"):
        read_manifest(path)


def test_a_broken_localizer_checkpoint_is_a_clear_message(tmp_path):
    folder = shutil.copytree(DEMO_MANIFEST.parent / "localizers" / "localizer-cpu", tmp_path / "localizer-cpu")
    (folder / "config.json").write_text("{ not json")
    models = [{**entry, "path": str(DEMO_MANIFEST.parent / entry["path"])}
              for entry in json.loads(DEMO_MANIFEST.read_text())["models"]]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"format": "spinecad-manifest/1", "models": models,
                                "localizer": {"key": "l", "name": "Localiser", "path": "localizer-cpu"}}))
    localizer, problem = load_localizer(read_manifest(path))
    assert localizer is None and "Localiser" in problem and "not valid JSON" in problem


# ---- The study-mode API on the committed demo localiser ------------------------------------------------------

def test_slice_rule_and_bad_input(demo_localizer):
    with pytest.raises(LocalizerInputError, match=NO_SAGITTAL):
        demo_localizer.choose_slice([])
    with pytest.raises(LocalizerInputError, match=ONE_SLICE):
        demo_localizer.choose_slice([np.zeros((8, 8))])
    assert [demo_localizer.choose_slice([np.zeros((8, 8))] * n) for n in (2, 5, 6, 9)] == [1, 2, 3, 4]
    for bad in (np.zeros((4, 4, 3)), np.zeros((0, 5)), np.full((9, 9), np.nan)):
        with pytest.raises(LocalizerInputError):
            demo_localizer.predict(bad)


def test_demo_localizer_places_fresh_phantom_levels_on_the_true_axial_slice(demo_localizer, fresh_phantom):
    """The acceptance on studies it never saw, through the API the study mode calls: the middle slice by position,
    its five points, each mapped to the nearest axial slice and compared with the phantom's own truth."""
    root, errors, same, mixups, total = fresh_phantom.out_dir / "train_images", [], 0, 0, 0
    coords = pd.read_csv(fresh_phantom.out_dir / "train_label_coordinates.csv")
    for truth in fresh_phantom.truth.groupby("study_id"):
        study_id, rows = truth
        sagittal_id = coords.loc[coords["study_id"] == study_id, "series_id"].iloc[0]
        files = sorted((root / str(study_id) / str(sagittal_id)).glob("*.dcm"),
                       key=lambda f: float(read_plane(f).origin[0]))  # by position, right to left
        index = demo_localizer.choose_slice(files)
        plane = read_plane(files[index])
        points = demo_localizer.predict(read_slice(files[index]).pixels)
        labelled = coords[(coords["study_id"] == study_id) & (coords["series_id"] == sagittal_id)]
        for level, row in rows.set_index("level").iterrows():
            axial = sorted((root / str(study_id) / str(row["series_id"])).glob("*.dcm"), key=lambda f: int(f.stem))
            planes: list[Plane] = [read_plane(f) for f in axial]
            found = points[LEVELS.index(level)]
            nearest = nearest_slice(planes, plane.to_patient(found.x, found.y))
            total += 1
            same += int(axial[nearest.index].stem) == int(row["instance_number"])
            point = labelled[labelled["level"] == level]
            if len(point):
                errors.append(np.hypot(point["x"].iloc[0] - found.x, point["y"].iloc[0] - found.y) * plane.spacing[0])
                others = labelled[labelled["level"] != level]
                gaps = np.hypot(others["x"] - found.x, others["y"] - found.y) * plane.spacing[0]
                nearest_level = others["level"].iloc[int(np.argmin(gaps))] if len(others) else level
                mixups += int(gaps.min() < errors[-1] and abs(LEVELS.index(nearest_level) - LEVELS.index(level)) == 1)
    assert total >= 80
    assert np.mean(errors) <= 3.0, f"mean point error {np.mean(errors):.2f} mm"
    assert same / total >= 0.90, f"same axial slice for {same}/{total}"
    assert mixups <= 0.02 * total
    assert all(p.confidence >= demo_localizer.min_confidence for p in points)


def test_committed_evaluation_meets_the_acceptance_and_reads_back():
    document = store.load_localizer_metrics(EVALUATION, "localizer-cpu", "test")
    points = store.load_localizer_points(EVALUATION, "localizer-cpu", "test")
    overall = document.overall
    assert overall.n == len(points) and set(document.per_level) == set(LEVELS)
    assert overall.mean_mm <= 3.0 and overall.same_axial >= 0.90 and overall.neighbour_mixups <= 0.02 * overall.n
    assert document.slice_rule is not None and document.slice_rule.exact == 1.0
    assert document.examples and all(store.localizer_example_path(EVALUATION, "localizer-cpu", "test", s).is_file()
                                     for s in document.examples)


def test_noise_and_a_blank_slice_are_not_placed(demo_localizer):
    rng = np.random.default_rng(0)
    for pixels in (rng.random((256, 256), dtype=np.float32), np.zeros((256, 256), np.float32)):
        placed = [p for p in demo_localizer.predict(pixels) if p.confidence >= demo_localizer.min_confidence]
        assert len(placed) <= 1


# ---- python -m train localizer -------------------------------------------------------------------------------

def test_train_localizer_cli_writes_a_checkpoint_artefacts_and_resumes(fresh_phantom, tmp_path, capsys,
                                                                       monkeypatch):
    """Two epochs on the fresh phantom: artefacts that read back and the manifest's entry beside the graders'. The
    same run stopped right after its first epoch's state is saved, then rerun, resumes and ends with the very
    same weights."""
    import train.localizer_train
    from train.localizer import main

    studies = sorted(pd.read_csv(fresh_phantom.out_dir / "train.csv")["study_id"])
    names = ["train"] * 12 + ["val"] * 4 + ["test"] * (len(studies) - 16)

    def run(name: str) -> tuple[int, object]:
        out = tmp_path / name
        out.mkdir(exist_ok=True)
        # The graders' split file, which the localiser reuses (20 studies are too few to stratify a new one).
        pd.DataFrame({"study_id": studies, "split": names}).to_csv(out / "split.csv", index=False)
        manifest = json.loads(DEMO_MANIFEST.read_text())
        models = [{**entry, "path": str(DEMO_MANIFEST.parent / entry["path"])} for entry in manifest["models"]]
        if not (out / "manifest.json").exists():
            (out / "manifest.json").write_text(json.dumps({"format": "spinecad-manifest/1", "models": models}))
        return main(["--demo", "--data-dir", str(fresh_phantom.out_dir), "--output-dir", str(out), "--epochs", "2",
                     "--cache-dir", str(tmp_path / "cache"), "--threads", "1"]), out

    code, whole = run("whole")
    assert code == 0
    assert "test split: mean point error" in capsys.readouterr().out
    points = store.load_localizer_points(whole / "evaluation", "localizer-cpu", "test")
    assert set(points["study_id"]) <= set(studies[16:]) and len(points) > 0
    localizer, problem = load_localizer(read_manifest(whole / "manifest.json"))
    assert localizer is not None, problem
    assert 0.0 <= localizer.min_confidence < 1.0

    saved = train.localizer_train.save_state

    def stop_after_first_epoch(*args, **kwargs):
        saved(*args, **kwargs)
        raise KeyboardInterrupt  # as a kill right after the state is on disk

    monkeypatch.setattr(train.localizer_train, "save_state", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run("interrupted")
    monkeypatch.undo()
    code, interrupted = run("interrupted")
    assert code == 0 and "resuming after epoch 1 of 2" in capsys.readouterr().out
    for name in ("model.safetensors", "config.json"):
        assert (interrupted / "localizers" / "localizer-cpu" / name).read_bytes() == \
            (whole / "localizers" / "localizer-cpu" / name).read_bytes()


def test_compare_tab_shows_the_error_table_and_the_points(tmp_path):
    import gradio as gr

    from spinecad.ui.compare_tab import CompareTab

    keys = [entry["key"] for entry in json.loads(DEMO_MANIFEST.read_text())["models"]]
    with gr.Blocks(), gr.Tab("Compare") as tab:
        compare = CompareTab(EVALUATION, keys, tmp_path)
        compare.render(tab)
    assert compare.localizer_key == "localizer-cpu"
    views = compare.views("test", None, None)
    table = views[compare.localizer_table]
    assert list(table["level"]) == [*LEVELS, "all levels"]
    document = store.load_localizer_metrics(EVALUATION, "localizer-cpu", "test")
    assert table["mean error (mm)"].iloc[-1] == f"{document.overall.mean_mm:.2f}"
    assert "labelled slice in 100%" in views[compare.localizer_note]
    figure = compare.localizer_figure()
    assert sum(trace.type == "heatmap" for trace in figure.data) == len(document.examples)
    points = store.load_localizer_points(EVALUATION, "localizer-cpu", "test")
    drawn = np.concatenate([trace.x for trace in figure.data if trace.type == "scatter" and "predicted" in trace.name])
    assert np.allclose(np.sort(drawn), np.sort(points[points["study_id"].isin(document.examples)]["x_pred"]))


def test_points_come_back_in_the_given_slices_own_pixels(demo_localizer, fresh_phantom):
    from scipy.ndimage import zoom

    coords = pd.read_csv(fresh_phantom.out_dir / "train_label_coordinates.csv")
    first = coords.iloc[0]
    path = fresh_phantom.out_dir / "train_images" / str(first["study_id"]) / str(first["series_id"]) / \
        f"{first['instance_number']}.dcm"
    pixels = read_slice(path).pixels
    square = demo_localizer.predict(pixels)
    wide = demo_localizer.predict(np.clip(zoom(pixels, (1.0, 1.25), order=1), 0, 1))  # 256 rows, 320 columns
    for a, b in zip(square, wide, strict=True):
        assert b.x == pytest.approx((a.x + 0.5) * 1.25 - 0.5, abs=1.5) and b.y == pytest.approx(a.y, abs=1.0)
