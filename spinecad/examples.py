"""The example-slice index the app offers first visitors: ``examples.csv`` beside the example files.

Written by ``train/examples.py`` (which renders the phantom slices), read by the app; the format is defined here
once. Columns: file (name in the folder), label (button text), format, level, true_grade (a grade or "n/a"), note.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd

from spinecad.atomic import atomic_path
from spinecad.logs import warn_once

logger = logging.getLogger(__name__)

INDEX_FILE = "examples.csv"


@dataclass(frozen=True)
class Example:
    """One example file and what a visitor should expect from it."""

    file: str  # name inside the examples folder
    label: str  # what the app shows on the example button
    format: str  # "DICOM" or "PNG"
    level: str  # the disc level the slice is at
    true_grade: str  # a SEVERITIES grade, or "n/a" where grading does not apply (a sagittal slice)
    note: str


def write_example_index(folder: str | Path, examples: Sequence[Example]) -> Path:
    """Write ``examples.csv`` into ``folder`` atomically; return its path."""
    path = Path(folder) / INDEX_FILE
    with atomic_path(path) as tmp:
        pd.DataFrame([asdict(example) for example in examples]).to_csv(tmp, index=False)
    return path


def read_example_index(folder: str | Path) -> list[Example]:
    """The examples an ``examples.csv`` lists whose file exists (empty when there is no index); others are logged."""
    folder = Path(folder)
    path = folder / INDEX_FILE
    if not path.is_file():
        return []
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = [f.name for f in fields(Example)]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(columns)}.")
    examples = [Example(**{c: row[c] for c in columns}) for row in frame.to_dict(orient="records")]
    missing = [example.file for example in examples if not (folder / example.file).is_file()]
    if missing:
        warn_once(logger, f"{path} lists {len(missing)} example file(s) that are not there, left out: "
                          f"{', '.join(missing)}.")
    return [example for example in examples if example.file not in missing]
