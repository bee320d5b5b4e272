"""Crash-safe file writes: a reader sees the old file or the whole new one, never half of one."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success fsync it and rename it over ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def remove_partials(target: str | Path) -> list[Path]:
    """Delete the staged ``.partial`` files that killed writers of ``target`` left beside it; return them.

    Readers never open these (they read ``target`` only), so this is housekeeping: a killed run's staged copy of
    a large file would otherwise stay on disk. Call it only where no other process may be writing ``target``.
    """
    target = Path(target)
    stale = list(target.parent.glob(f".{glob.escape(target.name)}.*.partial"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_text_atomic(target: str | Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically (UTF-8)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(target: str | Path, payload: bytes) -> None:
    """Write ``payload`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(payload)


def replace_directory(staged: str | Path, target: str | Path) -> None:
    """Swap a fully written ``staged`` folder in for ``target``; a crash leaves the old or the new one.

    The old folder is parked as ``.<name>.old`` during the swap; :func:`recover_directory` puts it back if a
    crash came between the two renames.
    """
    staged, target = Path(staged), Path(target)
    parked = target.with_name(f".{target.name}.old")
    if parked.exists():
        _remove_tree(parked)
    if target.exists():
        os.replace(target, parked)
    os.replace(staged, target)
    if parked.exists():
        _remove_tree(parked)


def recover_directory(target: str | Path) -> None:
    """Undo a swap that a crash interrupted: restore the parked old folder when the target is missing."""
    target = Path(target)
    parked = target.with_name(f".{target.name}.old")
    if parked.exists() and not target.exists():
        os.replace(parked, target)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
