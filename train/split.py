"""Patient-level train/val/test split (65/15/20), stratified so each split keeps the natural severity mix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from spinecad.atomic import atomic_path
from spinecad.evaluation.artefacts import KNOWN_SPLITS
from spinecad.labels import CONDITION, LEVEL_KEYS, LEVELS, SEVERITIES
from train.rsna import SampleIndex

SPLITS = KNOWN_SPLITS  # in the order the split writes them
VAL_FRACTION, TEST_FRACTION = 0.15, 0.20
DEFAULT_SEED = 42
# Strata with fewer studies than this are merged into a coarser stratum so every split can hold one.
MIN_STRATUM_STUDIES = 6


class SplitFileError(ValueError):
    """A split file that does not cover the studies being split, or names a split other than train/val/test."""


def study_grades(source: pd.DataFrame | SampleIndex) -> pd.DataFrame:
    """Labelled canal grades as (study_id, level, severity) rows, from train.csv or an index."""
    if isinstance(source, SampleIndex):
        rows = source.rows[source.rows["label_status"] == "ok"]
        return rows[["study_id", "level", "severity"]].reset_index(drop=True)
    if "severity" in source.columns:
        rows = source[source["severity"].isin(SEVERITIES)]
        return rows[["study_id", "level", "severity"]].reset_index(drop=True)
    columns = {f"{CONDITION}_{key}": level for key, level in zip(LEVEL_KEYS, LEVELS, strict=True)}
    long = source.melt(id_vars="study_id", value_vars=list(columns), var_name="level", value_name="severity")
    long = long[long["severity"].isin(SEVERITIES)].assign(level=lambda frame: frame["level"].map(columns))
    return long[["study_id", "level", "severity"]].astype({"study_id": "int64"}).reset_index(drop=True)


def _strata(grades: pd.DataFrame, max_strata: int) -> pd.Series:
    """Per study: number of Moderate and of Severe levels (each capped at 2); coarser if rare or too many."""
    per_study = grades.assign(
        moderate=grades["severity"] == SEVERITIES[1], severe=grades["severity"] == SEVERITIES[2]
    ).groupby("study_id")[["moderate", "severe"]].sum()
    worst = pd.Series(
        np.where(per_study["severe"] > 0, "severe", np.where(per_study["moderate"] > 0, "moderate", "normal")),
        index=per_study.index,
    )
    fine = np.minimum(per_study["moderate"], 2).astype(str) + "m" + np.minimum(per_study["severe"], 2).astype(str) + "s"
    fine = fine.where(fine.map(fine.value_counts()) >= MIN_STRATUM_STUDIES, worst)
    for strata in (fine, worst, pd.Series("any", index=per_study.index)):
        strata = strata.where(strata.map(strata.value_counts()) >= MIN_STRATUM_STUDIES, "any")
        # sklearn needs at least one study of each stratum in the smallest split.
        if strata.nunique() <= max_strata:
            return strata
    raise AssertionError("unreachable: a single stratum always fits")


def make_split(source: pd.DataFrame | SampleIndex, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Assign each study with a canal label to train/val/test (65/15/20), stratified.

    Returns columns study_id, split and stratum (the stratification key, for inspection).
    """
    grades = study_grades(source)
    n_studies = grades["study_id"].nunique()
    # Floor the held-out sizes as the paper does: 1,974 patients -> 394 test, 296 val, 1,284 train.
    n_test, n_val = int(TEST_FRACTION * n_studies), int(VAL_FRACTION * n_studies)
    if n_val < 1:
        raise ValueError(f"Only {n_studies} labelled studies; a 65/15/20 split needs at least 7.")
    strata = _strata(grades, max_strata=n_val)
    studies = strata.index.to_numpy()
    rest, test = train_test_split(studies, test_size=n_test, stratify=strata, random_state=seed)
    train, val = train_test_split(rest, test_size=n_val, stratify=strata.loc[rest], random_state=seed)
    split = pd.concat([
        pd.DataFrame({"study_id": ids, "split": name}) for name, ids in zip(SPLITS, (train, val, test), strict=True)
    ])
    split["stratum"] = split["study_id"].map(strata)
    return split.astype({"study_id": "int64"}).sort_values("study_id").reset_index(drop=True)


def split_summary(split: pd.DataFrame, source: pd.DataFrame | SampleIndex) -> pd.DataFrame:
    """Per split (and "all"): studies, labelled rows and the share (%) of each grade."""
    grades = study_grades(source).merge(split[["study_id", "split"]], on="study_id", how="inner")
    table = []
    for name in (*SPLITS, "all"):
        part = grades if name == "all" else grades[grades["split"] == name]
        shares = {grade: 100.0 * float((part["severity"] == grade).mean()) for grade in SEVERITIES}
        table.append({"split": name, "studies": part["study_id"].nunique(), "rows": len(part), **shares})
    return pd.DataFrame(table).set_index("split")


def write_split(split: pd.DataFrame, path: Path) -> None:
    """Write the split as CSV, atomically."""
    with atomic_path(path) as tmp:
        split.to_csv(tmp, index=False)


def read_split(path: Path, source: pd.DataFrame | SampleIndex) -> pd.DataFrame:
    """Read a split file and refuse it unless it names only train/val/test and covers every labelled study."""
    split = pd.read_csv(path)
    if not {"study_id", "split"} <= set(split.columns):
        raise SplitFileError(f"{path} needs columns study_id and split; it has {', '.join(split.columns)}.")
    bad = split[~split["split"].isin(SPLITS)]
    if len(bad):
        raise SplitFileError(
            f"{path}: study {bad['study_id'].iloc[0]} has split {bad['split'].iloc[0]!r}; "
            f"allowed: {', '.join(SPLITS)}."
        )
    repeated = split["study_id"][split["study_id"].duplicated()]
    if len(repeated):
        raise SplitFileError(f"{path}: study {repeated.iloc[0]} appears more than once.")
    missing = sorted(set(study_grades(source)["study_id"]) - set(split["study_id"]))
    if missing:
        raise SplitFileError(
            f"{path} misses {len(missing)} labelled studies (e.g. {missing[:3]}); delete it to make a new split."
        )
    return split


def load_or_make_split(path: Path, source: pd.DataFrame | SampleIndex, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Reuse the split at ``path`` if there is one, else make it and write it there."""
    path = Path(path)
    if path.is_file():
        return read_split(path, source)
    split = make_split(source, seed=seed)
    write_split(split, path)
    return split
