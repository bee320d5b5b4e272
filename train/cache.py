"""Decoded-slice cache: every training image decoded once into a uint8 memory-mapped array.

An epoch then reads bytes, never DICOM. The cache is keyed by the image files and the side length, so a changed
dataset or size builds a new one; it is written to a temporary name and renamed only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from spinecad.atomic import write_text_atomic
from spinecad.imaging import ImageReadError, read_slice
from spinecad.models.preprocess import resize_unit


@dataclass
class SliceCache:
    """``images[i]`` is the decoded slice of ``files[i]`` (uint8, size x size); ``failed`` maps file -> reason."""

    images: np.ndarray
    files: list[str]
    failed: dict[str, str]
    size: int

    def position(self) -> dict[str, int]:
        return {file: i for i, file in enumerate(self.files)}

    def __reduce__(self):
        """Pickled (to a worker process) as its file name: the worker maps the same file, nothing is copied."""
        return _open_cache, (str(self.images.filename), self.images.shape, self.files, self.failed, self.size)


def _open_cache(path: str, shape: tuple[int, ...], files: list[str], failed: dict[str, str], size: int) -> SliceCache:
    return SliceCache(np.memmap(path, dtype=np.uint8, mode="r", shape=shape), files, failed, size)


def cache_key(files: list[str], size: int) -> str:
    """A digest of the file list, their sizes and modification times, and the side length."""
    digest = hashlib.sha256(f"size={size}".encode())
    for file in files:
        stat = os.stat(file) if os.path.exists(file) else None
        digest.update(f"{file}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}\n".encode())
    return digest.hexdigest()[:16]


def build_cache(files: list[str], cache_dir: Path, size: int, *, progress: bool = True) -> SliceCache:
    """Decode each distinct file once (or reuse a complete cache); unreadable files are listed, not fatal."""
    unique = sorted(dict.fromkeys(files))
    key = cache_key(unique, size)
    data_path = cache_dir / f"slices-{size}-{key}.u8"
    meta_path = cache_dir / f"slices-{size}-{key}.json"
    cached = _read_cache(data_path, meta_path, size)
    if cached is not None:
        return cached

    cache_dir.mkdir(parents=True, exist_ok=True)
    decoded: list[np.ndarray] = []
    kept: list[str] = []
    failed: dict[str, str] = {}
    for file in tqdm(unique, desc=f"decoding slices ({size} px)", unit="img", disable=not progress or None):
        try:
            pixels = read_slice(file).pixels
        except ImageReadError as error:
            failed[file] = str(error)
            continue
        resized = resize_unit(torch.from_numpy(pixels)[None, None], size)[0, 0].numpy()
        decoded.append(np.round(resized * 255).astype(np.uint8))
        kept.append(file)
    staging = data_path.with_name(data_path.name + ".partial")
    array = np.memmap(staging, dtype=np.uint8, mode="w+", shape=(max(len(kept), 1), size, size))
    for i, image in enumerate(decoded):
        array[i] = image
    array.flush()
    del array
    os.replace(staging, data_path)
    write_text_atomic(meta_path, json.dumps({"files": kept, "failed": failed, "size": size}))
    images = np.memmap(data_path, dtype=np.uint8, mode="r", shape=(max(len(kept), 1), size, size))
    return SliceCache(images, kept, failed, size)


def _read_cache(data_path: Path, meta_path: Path, size: int) -> SliceCache | None:
    """A complete cache, or None: a missing, unreadable or short file (a disk that filled up, a copy cut short)
    means decoding again, never reading garbage or crashing on it."""
    try:
        meta = json.loads(meta_path.read_text())
        files, failed = list(meta["files"]), dict(meta["failed"])
        shape = (max(len(files), 1), size, size)
        if meta["size"] != size or data_path.stat().st_size != shape[0] * size * size:
            return None
    except (OSError, ValueError, KeyError, TypeError):  # absent, not JSON, or not the cache's JSON
        return None
    return SliceCache(np.memmap(data_path, dtype=np.uint8, mode="r", shape=shape), files, failed, size)


def attach_positions(rows: pd.DataFrame, cache: SliceCache, file_column: str = "file") -> pd.DataFrame:
    """Add each row's cache position (-1 where its file could not be decoded) and the decode error."""
    positions = cache.position()
    rows = rows.copy()
    rows["cache_position"] = rows[file_column].map(lambda f: positions.get(f, -1)).astype(int)
    rows["decode_error"] = rows[file_column].map(lambda f: cache.failed.get(f))
    return rows
