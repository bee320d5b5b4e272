"""``python -m spinecad predict`` on the phantom's Kaggle folder; the round trip through ``python -m train score``."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd

from tests.conftest import DEMO_MANIFEST, REPO
from tests.study_fixture import truth


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_predict_a_kaggle_folder_then_score_it(phantom_studies, tmp_path):
    root = phantom_studies.out_dir
    output, placements = tmp_path / "predictions.csv", tmp_path / "placements.csv"
    result = _run("spinecad", "predict", root / "train_images", "--coordinates", root / "train_label_coordinates.csv",
                  "--output", output, "--placements", placements, "--manifest", DEMO_MANIFEST, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not graded at" in result.stderr  # the phantom leaves some levels without a point or an axial series
    predictions = pd.read_csv(output)
    assert list(predictions.columns) == ["row_id", "normal_mild", "moderate", "severe"]
    assert predictions[["normal_mild", "moderate", "severe"]].sum(axis=1).round(4).eq(1).all()
    placed = pd.read_csv(placements).dropna(subset=["axial_instance"])
    hits = sum((int(row.series_folder), int(row.axial_instance)) in truth(phantom_studies, int(row.study_id))[row.level]
               for row in placed.itertuples())
    expected = sum(bool(v) for s in phantom_studies.truth["study_id"].unique()
                   for v in truth(phantom_studies, int(s)).values())
    print(f"CLI: {hits} of {expected} levels on the phantom's own slice")
    assert hits >= 0.95 * expected and hits == len(placed) == len(predictions)

    scored = _run("train", "score", "--data-dir", root, "--predictions", output)
    assert scored.returncode == 0, scored.stderr[-2000:]
    majority = predictions.assign(normal_mild=1.0, moderate=0.0, severe=0.0)
    majority.to_csv(tmp_path / "majority.csv", index=False)
    baseline = json.loads(_run("train", "score", "--data-dir", root, "--predictions", tmp_path / "majority.csv").stdout)
    ours = json.loads(scored.stdout)
    print("macro F1", ours["macro_f1"], "vs majority", baseline["macro_f1"])
    assert ours["macro_f1"] > baseline["macro_f1"] + 0.2


def test_single_slices_need_a_level_and_bad_paths_are_refused(phantom_studies, tmp_path):
    slice_path = next((phantom_studies.out_dir / "train_images").rglob("*.dcm"))
    refused = _run("spinecad", "predict", slice_path, "--output", tmp_path / "p.csv", "--manifest", DEMO_MANIFEST)
    assert refused.returncode == 2 and "--level" in refused.stderr
    graded = _run("spinecad", "predict", slice_path, "--level", "L4/L5", "--output", tmp_path / "p.csv",
                  "--manifest", DEMO_MANIFEST)
    assert graded.returncode == 0, graded.stderr[-2000:]
    study_id = slice_path.parent.parent.name
    assert pd.read_csv(tmp_path / "p.csv")["row_id"].tolist() == [f"{study_id}_spinal_canal_stenosis_l4_l5"]
    missing = _run("spinecad", "predict", tmp_path / "nowhere", "--output", tmp_path / "q.csv")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
