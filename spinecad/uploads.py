"""Uploaded files are read once into memory and removed from the server's upload folder straight away.

The web framework stores each upload as ``<upload root>/<content hash>/<original file name>``; the file name can
identify a patient, so it is never put into a message or a log, and the folder goes with the file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from spinecad.imaging import ImageReadError
from spinecad.imaging.limits import MAX_FILE_BYTES


def consume_upload(path: str | os.PathLike[str], upload_root: str | os.PathLike[str]) -> bytes:
    """Return the bytes of an uploaded file and delete it (and its folder, once empty) from ``upload_root``.

    Files outside ``upload_root`` (e.g. the committed examples) are read but never deleted.
    """
    upload = Path(path)
    try:
        with upload.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ImageReadError("The upload is no longer on the server; please upload the file again.") from None
    except IsADirectoryError:
        raise ImageReadError("A folder was given where one image file was expected.") from None
    finally:
        remove_upload(upload, upload_root)
    if len(data) > MAX_FILE_BYTES:
        raise ImageReadError(f"The file is larger than the {MAX_FILE_BYTES // 2**20} MB allowed for one slice.")
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
