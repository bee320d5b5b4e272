"""Patient-level 65/15/20 split: paper sizes and severity mix on the real train.csv, reuse and refusal of split files.

Observed on the real train.csv with seed 42 (run with -s for the table): train 1,284 / val 296 / test 394 studies;
Moderate 7.40 / 7.57 / 7.56 % and Severe 4.75 / 4.80 / 4.77 % of labelled levels (all: 7.46 % and 4.76 %);
study 3008676218 has no canal label and is left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spinecad.labels import CONDITION, LEVEL_KEYS, SEVERITIES
from train.rsna import SampleIndex, build_sample_index
from train.split import (
    SPLITS,
    SplitFileError,
    load_or_make_split,
    make_split,
    split_summary,
    study_grades,
    write_split,
)

REAL_DATA = Path(__file__).resolve().parents[2] / "shared/data/rsna2024"
needs_real_data = pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real RSNA label CSVs not found at {REAL_DATA}")


def studies_without_canal_labels(source: pd.DataFrame | SampleIndex) -> list[int]:
    """Studies that have no labelled canal grade at any level; they are left out of the split."""
    every = source.rows["study_id"] if isinstance(source, SampleIndex) else source["study_id"]
    labelled = set(study_grades(source)["study_id"])
    return sorted(int(study) for study in set(every.astype("int64")) - labelled)


@pytest.fixture(scope="module")
def real_train() -> pd.DataFrame:
    return pd.read_csv(REAL_DATA / "train.csv")


def _synthetic_train(n_studies: int, seed: int = 0) -> pd.DataFrame:
    """A train.csv-shaped frame with random canal grades (60/25/15) and one unlabelled study."""
    rng = np.random.default_rng(seed)
    grades = rng.choice(SEVERITIES, size=(n_studies, len(LEVEL_KEYS)), p=[0.6, 0.25, 0.15]).astype(object)
    grades[0, :] = None
    frame = pd.DataFrame(grades, columns=[f"{CONDITION}_{key}" for key in LEVEL_KEYS])
    frame.insert(0, "study_id", np.arange(n_studies) * 1000 + 4003253)
    return frame


@needs_real_data
def test_real_split_matches_paper_and_keeps_the_mix(real_train):
    split = make_split(real_train, seed=42)
    summary = split_summary(split, real_train)
    print("\n" + summary.round(2).to_string())
    sizes = split["split"].value_counts()
    for name, paper_size in (("train", 1284), ("val", 296), ("test", 394)):
        assert abs(sizes[name] - paper_size) <= 1, (name, sizes[name])
    assert studies_without_canal_labels(real_train) == [3008676218]
    assert 3008676218 not in set(split["study_id"])
    assert len(split) == split["study_id"].nunique() == 1974  # each patient in exactly one split
    assert set(split["study_id"]) == set(real_train["study_id"]) - {3008676218}
    for grade in ("Moderate", "Severe"):
        spread = (summary.loc[list(SPLITS), grade] - summary.loc["all", grade]).abs()
        assert (spread <= 1.5).all(), (grade, spread.to_dict())


@needs_real_data
def test_split_from_index_equals_split_from_csv(real_train):
    index = build_sample_index(REAL_DATA, read_images=False)
    from_index = make_split(index, seed=42)
    from_csv = make_split(real_train, seed=42)
    pd.testing.assert_frame_equal(from_index, from_csv)


def test_split_is_seeded_and_patient_disjoint():
    train = _synthetic_train(200)
    first, again, other = make_split(train, seed=42), make_split(train, seed=42), make_split(train, seed=7)
    pd.testing.assert_frame_equal(first, again)
    assert not first["split"].equals(other["split"])
    assert first["study_id"].is_unique and set(first["split"]) == set(SPLITS)
    assert first["split"].value_counts().to_dict() == {"train": 131, "test": 39, "val": 29}
    assert studies_without_canal_labels(train) == [4003253]


def test_small_dataset_uses_a_coarser_stratum():
    split = make_split(_synthetic_train(21), seed=42)
    assert split["split"].value_counts().to_dict() == {"train": 13, "test": 4, "val": 3}
    assert split["stratum"].nunique() <= 3


def test_split_file_is_reused(tmp_path):
    train = _synthetic_train(60)
    path = tmp_path / "split.csv"
    made = load_or_make_split(path, train, seed=42)
    assert path.is_file() and not list(tmp_path.glob("*.partial"))
    # A different seed must not matter once the file exists: the written split is the one used.
    reused = load_or_make_split(path, train, seed=7)
    pd.testing.assert_frame_equal(made[["study_id", "split"]], reused[["study_id", "split"]])


def test_split_file_missing_studies_is_refused(tmp_path):
    train = _synthetic_train(60)
    path = tmp_path / "split.csv"
    split = make_split(train)
    write_split(split.iloc[5:], path)
    with pytest.raises(SplitFileError, match=r"misses 5 labelled studies"):
        load_or_make_split(path, train)


def test_split_file_with_bad_split_name_is_refused(tmp_path):
    train = _synthetic_train(60)
    path = tmp_path / "split.csv"
    split = make_split(train)
    split.loc[3, "split"] = "validation"
    write_split(split, path)
    with pytest.raises(SplitFileError, match="'validation'; allowed: train, val, test"):
        load_or_make_split(path, train)
