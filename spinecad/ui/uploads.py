"""Uploaded files are read once into memory and removed from the server's upload folder straight away.

The web framework stores each upload as ``<upload root>/<content hash>/<original file name>``; the file name can
identify a patient, so it is never put into a message or a log, and the folder goes with the file.

Because the path is a hash of the content, identical uploads in flight together (two visitors sending the same
file, a double click, a script's retry) share one path: the first request deletes the file the others still need.
So the bytes a request read stay in memory, keyed by that path, for ``SHARED_UPLOAD_TTL_S`` seconds: a request whose
file is already gone gets them from there. Nothing is kept on disk.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from spinecad.imaging import ImageReadError
from spinecad.imaging.limits import MAX_FILE_BYTES

SHARED_UPLOAD_TTL_S = 60.0  # longer than a request waits in the queue (32 places, about a second each on CPU)
SHARED_UPLOAD_MAX_BYTES = 2 * MAX_FILE_BYTES  # memory held for this at most; the oldest entries go first


class _RecentUploads:
    """Bytes of uploads read in the last ``ttl_s`` seconds, by resolved path, within a memory budget."""

    def __init__(self, ttl_s: float, max_bytes: int) -> None:
        self.ttl_s, self.max_bytes = ttl_s, max_bytes
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()  # requests run in several threads

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (time.monotonic() + self.ttl_s, data)
            self._expire()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            self._expire()
            entry = self._entries.get(key)
            return entry[1] if entry else None

    def _expire(self) -> None:
        now, held = time.monotonic(), sum(len(data) for _, data in self._entries.values())
        while self._entries:
            expires, data = next(iter(self._entries.values()))
            if expires > now and held <= self.max_bytes:
                break
            self._entries.popitem(last=False)
            held -= len(data)


_RECENT = _RecentUploads(SHARED_UPLOAD_TTL_S, SHARED_UPLOAD_MAX_BYTES)


def consume_upload(path: str | os.PathLike[str], upload_root: str | os.PathLike[str], *,
                   limit: int = MAX_FILE_BYTES) -> bytes:
    """Return the bytes of an uploaded file and delete it (and its folder, once empty) from ``upload_root``.

    Files outside ``upload_root`` (e.g. the committed examples) are read but never deleted. ``limit``: most bytes
    read (a slice's limit by default; a study's zip may be larger).
    """
    upload = Path(path)
    key = str(upload.resolve())
    try:
        with upload.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        shared = _RECENT.get(key)  # an identical upload's request read it a moment ago
        if shared is None:
            raise ImageReadError("The upload is no longer on the server; please upload the file again.") from None
        return shared
    except IsADirectoryError:
        raise ImageReadError("A folder was given where one image file was expected.") from None
    finally:
        removed = remove_upload(upload, upload_root)
    if len(data) > limit:
        what = "one slice" if limit == MAX_FILE_BYTES else "one upload"
        raise ImageReadError(f"The file is larger than the {limit // 2**20} MB allowed for {what}.")
    if removed:
        _RECENT.put(key, data)
    return data


def remove_upload(path: str | os.PathLike[str], upload_root: str | os.PathLike[str]) -> bool:
    """Delete an uploaded file and its per-upload folder if they lie inside ``upload_root``; True if deleted."""
    root = Path(upload_root).resolve()
    upload = Path(path).resolve()
    if root not in upload.parents:
        return False
    with contextlib.suppress(FileNotFoundError):
        upload.unlink()
    folder = upload.parent
    if folder != root:
        # Another request may be holding an upload of identical bytes in the same folder: leave it then.
        with contextlib.suppress(OSError):
            folder.rmdir()
    return True
