"""From a sample index to training-ready data: split, decode once into the cache, datasets per split."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from train.cache import SliceCache, attach_positions, build_cache
from train.data import SliceDataset
from train.rsna import SampleIndex, write_index
from train.split import load_or_make_split, read_split


@dataclass
class PreparedData:
    """Usable rows with their split and cache position, the cache, and what was skipped and why."""

    rows: pd.DataFrame
    cache: SliceCache
    skipped: dict[str, int]
    problems: list[str]

    def dataset(self, split: str) -> SliceDataset:
        return SliceDataset(self.rows[self.rows["split"] == split], self.cache)

    def fingerprint(self) -> str:
        """Changes whenever the samples, their labels, their split or the cache size change."""
        columns = ["study_id", "level", "severity", "file", "split"]
        payload = self.rows[columns].to_csv(index=False) + f"size={self.cache.size}"
        return hashlib.sha256(payload.encode()).hexdigest()


def prepare_data(
    index: SampleIndex,
    output_dir: Path,
    cache_dir: Path,
    size: int,
    *,
    seed: int,
    progress: bool = True,
    writer: bool = True,
    log: Callable[[str], None] = print,
) -> PreparedData:
    """Split by study (reusing ``output_dir/split.csv``), decode usable slices once, count every exclusion.

    ``writer=False`` (the other ranks of a data-parallel run) only reads the index, split and cache the writer made.
    """
    if writer:
        write_index(index, output_dir / "index.csv")
    problems = list(index.problems)
    skipped = {"not usable in the index": int((~index.rows["usable"]).sum())}
    rows = index.rows[index.rows["usable"]].copy()
    rows["file"] = [str(index.image_file(path)) for path in rows["image_path"]]

    split_path = output_dir / "split.csv"
    split = load_or_make_split(split_path, index, seed=seed) if writer else read_split(split_path, index)
    rows = rows.merge(split[["study_id", "split"]], on="study_id", how="left")
    skipped["study not in the split"] = int(rows["split"].isna().sum())
    rows = rows[rows["split"].notna()]

    cache = build_cache(rows["file"].tolist(), cache_dir, size, progress=progress)
    rows = attach_positions(rows, cache)
    undecodable = rows[rows["cache_position"] < 0]
    for file, reason in undecodable[["file", "decode_error"]].drop_duplicates().itertuples(index=False):
        problems.append(f"{file}: {reason}")
        log(f"skipping unreadable image {file}: {reason}")
    skipped["image could not be decoded"] = len(undecodable)
    rows = rows[rows["cache_position"] >= 0].reset_index(drop=True)
    counts = rows.groupby("split").size().to_dict()
    log(f"samples: {counts}; skipped: {skipped}")
    for split_name in ("train", "val"):
        if counts.get(split_name, 0) == 0:
            raise ValueError(f"No usable {split_name} samples: nothing to train or select on.")
    return PreparedData(rows, cache, skipped, problems)
