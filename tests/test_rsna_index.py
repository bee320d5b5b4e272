"""RSNA Kaggle-layout index: real label CSVs, geometry on a phantom with images, and refused or flagged inputs.

Counts observed on the real CSVs (no images, so no geometry; see test_real_csv_counts output with -s):
1,975 studies, 9,875 rows, 9,614 usable; rules: subarticular_agree 5,459, subarticular_disagree_no_geometry
4,147, no_instance 261, subarticular_right_only 6, subarticular_left_only 2; grades: Normal/Mild 8,664,
Moderate 736, Severe 470, missing 5 (study 3008676218 has no canal label); 335 studies with several Axial T2.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from train.phantom import write_phantom_dataset
from train.rsna import (
    INDEX_COLUMNS,
    REQUIRED_CSVS,
    DatasetLayoutError,
    build_sample_index,
    format_counts,
    read_manifest_csv,
    write_index,
)

REAL_DATA = Path(__file__).resolve().parents[2] / "shared/data/rsna2024"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A 20-study phantom with images: every scenario, a second axial series, a study with no axial series."""
    out_dir = tmp_path_factory.mktemp("phantom")
    return write_phantom_dataset(out_dir, n_studies=20, seed=3, image_size=128)


@pytest.fixture()
def small_phantom(tmp_path):
    """A tiny, disposable phantom for tests that break it."""
    return write_phantom_dataset(tmp_path / "data", n_studies=3, seed=5, image_size=64)


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real RSNA label CSVs not found at {REAL_DATA}")
def test_real_csv_counts():
    index = build_sample_index(REAL_DATA)
    counts = index.counts
    print("\n" + format_counts(index))
    assert counts["n_studies"] == 1975
    assert counts["n_rows"] == len(index.rows) == 5 * counts["n_studies"]
    assert list(index.rows.columns) == list(INDEX_COLUMNS)
    assert not counts["images_read"] and set(index.rows["image_status"]) == {"not_checked"}
    assert sum(counts["rule"].values()) == counts["n_rows"]
    assert counts["rule"] == {
        "subarticular_agree": 5459, "subarticular_disagree_no_geometry": 4147, "no_instance": 261,
        "subarticular_right_only": 6, "subarticular_left_only": 2,
    }
    assert counts["severity"] == {"Normal/Mild": 8664, "Moderate": 736, "Severe": 470}
    assert counts["label_status"] == {"ok": 9870, "missing_label": 5}
    assert counts["n_studies_without_canal_labels"] == 1
    assert counts["n_studies_several_axial_t2"] == 335
    assert counts["n_usable"] == 9614 == int(index.rows["usable"].sum())
    assert index.problems == []
    # Every excluded row says why: no label, or no slice chosen.
    excluded = index.rows[~index.rows["usable"]]
    assert ((excluded["label_status"] != "ok") | excluded["instance_number"].isna()).all()


def _truth_keys(truth: pd.DataFrame) -> set[tuple]:
    return set(zip(truth["study_id"], truth["level"], truth["series_id"], truth["instance_number"], strict=True))


def test_geometry_picks_the_axial_slice_at_the_disc(phantom):
    index = build_sample_index(phantom.out_dir, read_images=True)
    rows = index.rows
    geometry = rows[rows["rule"] == "geometry_nearest_canal_point"]
    assert len(geometry) >= 4, "the phantom must make the index fall back to geometry"
    truth = _truth_keys(phantom.truth)
    assert _truth_keys(geometry) <= truth
    assert (geometry["geometry_distance_mm"] < 0.5).all()
    # Rows chosen from the readers' points land on the disc too; every chosen file exists.
    chosen = rows[rows["rule"].str.startswith("subarticular")]
    assert _truth_keys(chosen) <= truth
    assert set(rows["image_status"][rows["image_path"].notna()]) == {"present"}
    assert index.problems == []


def test_phantom_exercises_every_rule(phantom):
    with_images = build_sample_index(phantom.out_dir).counts
    without_images = build_sample_index(phantom.out_dir, read_images=False).counts
    print("\nphantom, images:", with_images["rule"], "\nphantom, no images:", without_images["rule"])
    assert with_images["images_read"] and not without_images["images_read"]
    assert set(with_images["rule"]) == {
        "subarticular_agree", "subarticular_left_only", "subarticular_right_only",
        "geometry_nearest_canal_point", "no_axial_series", "no_instance",
    }
    assert "subarticular_disagree_no_geometry" in without_images["rule"]
    assert "geometry_nearest_canal_point" not in without_images["rule"]
    assert with_images["n_studies_several_axial_t2"] == 1
    assert with_images["label_status"]["missing_label"] == 2


def test_disagreement_without_images_takes_the_left_reader(phantom):
    rows = build_sample_index(phantom.out_dir, read_images=False).rows
    points = pd.read_csv(phantom.out_dir / "train_label_coordinates.csv")
    left = points[points["condition"] == "Left Subarticular Stenosis"]
    left_instance = dict(zip(zip(left["study_id"], left["level"], strict=True), left["instance_number"], strict=True))
    disagreeing = rows[rows["rule"] == "subarticular_disagree_no_geometry"]
    assert len(disagreeing) > 0
    for row in disagreeing.itertuples():
        assert row.instance_number == left_instance[(row.study_id, row.level)]


def test_missing_csv_is_named(small_phantom):
    (small_phantom.out_dir / "train_series_descriptions.csv").unlink()
    with pytest.raises(DatasetLayoutError, match=r"train_series_descriptions\.csv is missing"):
        build_sample_index(small_phantom.out_dir)
    assert "train_series_descriptions.csv" in REQUIRED_CSVS


def test_read_images_without_image_folder_is_refused(small_phantom):
    shutil.rmtree(small_phantom.out_dir / "train_images")
    with pytest.raises(DatasetLayoutError, match="train_images"):
        build_sample_index(small_phantom.out_dir, read_images=True)
    assert build_sample_index(small_phantom.out_dir).counts["images_read"] is False


def test_invalid_label_is_flagged_and_the_run_continues(small_phantom):
    train_csv = small_phantom.out_dir / "train.csv"
    train = pd.read_csv(train_csv, dtype=str)
    train.loc[1, "spinal_canal_stenosis_l4_l5"] = "Mild"
    train.to_csv(train_csv, index=False)
    index = build_sample_index(small_phantom.out_dir)
    study = int(train.loc[1, "study_id"])
    expected = f"train.csv row 2 (study {study}, L4/L5): 'Mild' is not one of Normal/Mild, Moderate, Severe"
    assert index.problems == [expected]
    assert index.counts["label_status"]["invalid_label"] == 1
    assert index.counts["n_rows"] == 15
    bad = index.rows[(index.rows["study_id"] == study) & (index.rows["level"] == "L4/L5")].iloc[0]
    assert bad["label_status"] == "invalid_label" and pd.isna(bad["severity"]) and not bad["usable"]


def test_missing_image_file_is_counted(small_phantom):
    before = build_sample_index(small_phantom.out_dir).rows
    victim = before[before["rule"] == "subarticular_agree"].iloc[0]
    (small_phantom.out_dir / victim["image_path"]).unlink()
    index = build_sample_index(small_phantom.out_dir)
    row = index.rows.loc[victim.name]
    assert row["image_status"] == "missing_file" and not row["usable"]
    assert index.counts["image_status"]["missing_file"] == 1
    assert index.counts["n_usable"] == int(before["usable"].sum()) - 1
    assert any(victim["image_path"] in problem and "is missing" in problem for problem in index.problems)


def test_manifest_and_index_csv(small_phantom, tmp_path):
    index = build_sample_index(small_phantom.out_dir)
    index_csv = tmp_path / "index.csv"
    write_index(index, index_csv)
    written = pd.read_csv(index_csv)
    assert list(written.columns) == list(INDEX_COLUMNS) and len(written) == 15
    assert not list(tmp_path.glob("*.partial"))

    usable = index.rows[index.rows["usable"]].head(3)
    manifest = pd.DataFrame({
        "image_path": [str(small_phantom.out_dir / path) for path in usable["image_path"]] + ["slices/absent.dcm"],
        "study_id": [*usable["study_id"], 1],
        "level": ["l1_l2", "L2/L3", "L3-L4", "L4/L5"],
        "severity": ["Normal/Mild", "Severe", "Mild", "Moderate"],
    })
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    slices = read_manifest_csv(tmp_path / "manifest.csv")
    assert list(slices.rows.columns) == list(INDEX_COLUMNS)
    assert list(slices.rows["level"]) == ["L1/L2", "L2/L3", "L3/L4", "L4/L5"]
    assert list(slices.rows["label_status"]) == ["ok", "ok", "invalid_label", "ok"]
    assert list(slices.rows["image_status"]) == ["present", "present", "present", "missing_file"]
    assert list(slices.rows["usable"]) == [True, True, False, False]
    assert slices.image_file("slices/absent.dcm") == tmp_path / "slices/absent.dcm"
    assert len(slices.problems) == 2 and "'Mild' is not one of" in slices.problems[0]
