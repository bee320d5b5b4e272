"""An upload's files, in memory and bounded: a zip, a folder or several files become named byte strings.

Nothing is extracted to disk, so a member called ``../../etc/passwd`` is only a name. Limits are checked before
bytes are read (the sizes a zip declares) and while they are read (the sizes it actually inflates to).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

MAX_MEMBERS = 3000  # files in one upload; a lumbar study holds a few hundred at most
MAX_TOTAL_BYTES = 768 * 2**20  # all files together, inflated
MAX_MEMBER_BYTES = 64 * 2**20  # one file (the slice reader's own limit)
MAX_RATIO = 200  # inflated / compressed size of a member; DICOM slices compress 2-10x
MAX_UPLOAD_BYTES = 256 * 2**20  # one uploaded file, e.g. a study's zip (the app's upload limit)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".7z", ".rar", ".bz2", ".xz")


class StudyError(ValueError):
    """An upload that cannot be read as one study; the message says why, without quoting any header value."""


@dataclass(frozen=True)
class Member:
    """One file of an upload: its name inside the upload (never a path to open) and its bytes."""

    name: str
    data: bytes


@dataclass
class Gathered:
    """The files of an upload that may be DICOM, and how many of the others were skipped, by reason."""

    members: list[Member] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    total_bytes: int = 0

    def add(self, name: str, data: bytes) -> None:
        if _is_archive(name, data):
            self.skipped["nested archive"] += 1
            return
        self.total_bytes += len(data)
        if self.total_bytes > MAX_TOTAL_BYTES:
            raise StudyError(f"The upload holds more than {MAX_TOTAL_BYTES // 2**20} MB of files; "
                             "upload one study (its sagittal and axial series) at a time.")
        self.members.append(Member(name, data))

    def count(self, n: int) -> None:
        if len(self.members) + sum(self.skipped.values()) + n > MAX_MEMBERS:
            raise StudyError(f"The upload holds more than {MAX_MEMBERS} files; a lumbar study has a few hundred "
                             "at most. Upload one study at a time.")


def _is_archive(name: str, data: bytes) -> bool:
    return data[:4] in _ZIP_MAGIC or name.lower().endswith(_ARCHIVE_SUFFIXES)


def gather(sources: Iterable[str | os.PathLike | bytes | Member]) -> Gathered:
    """Read every file of the given zips, folders and files (zip bytes, or members already in memory) into memory,
    within the limits."""
    gathered = Gathered()
    for source in sources:
        if isinstance(source, (bytes, bytearray)):
            _read_zip(io.BytesIO(bytes(source)), gathered)
            continue
        if isinstance(source, Member):
            if source.data[:4] in _ZIP_MAGIC:
                _read_zip(io.BytesIO(source.data), gathered)
            else:
                gathered.count(1)
                gathered.add(source.name, source.data)
            continue
        path = Path(source)
        if path.is_dir():
            _read_folder(path, gathered)
        elif path.is_file():
            with path.open("rb") as handle:
                head = handle.read(4)
            if head in _ZIP_MAGIC:
                with path.open("rb") as handle:
                    _read_zip(handle, gathered)
            else:
                gathered.count(1)
                gathered.add(path.name, _read_file(path))
        else:
            raise StudyError("A file of the upload is no longer there (it may have been removed before it was read).")
    if not gathered.members:
        skipped = ", ".join(f"{n} {why}" for why, n in gathered.skipped.items())
        raise StudyError("The upload holds no DICOM files" + (f" (skipped: {skipped})." if skipped else "."))
    return gathered


def _read_file(path: Path) -> bytes:
    if path.stat().st_size > MAX_MEMBER_BYTES:
        raise StudyError(f"A file of the upload is over {MAX_MEMBER_BYTES // 2**20} MB; a slice is well under 1 MB.")
    return path.read_bytes()


def _read_folder(folder: Path, gathered: Gathered) -> None:
    files = []
    for root, _dirs, names in os.walk(folder, followlinks=False):
        for name in names:
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                gathered.skipped["not a regular file"] += 1
                continue
            if len(files) >= MAX_MEMBERS:
                gathered.count(len(files) + 1)
            files.append(path)
    for path in sorted(files):
        # The folder's own name stays in the member name: Kaggle layouts name the study by it.
        gathered.add(str(path.relative_to(folder.parent)), _read_file(path))


def _read_zip(handle, gathered: Gathered) -> None:
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise StudyError("The upload is not a readable zip archive.") from None
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        gathered.count(len(infos))
        declared = sum(info.file_size for info in infos)
        if declared > MAX_TOTAL_BYTES:
            raise StudyError(f"The zip declares {declared / 2**20:.0f} MB of files, more than the "
                             f"{MAX_TOTAL_BYTES // 2**20} MB allowed for one study; it was not unpacked.")
        for info in infos:
            if info.file_size > MAX_MEMBER_BYTES or info.file_size > MAX_RATIO * max(info.compress_size, 1):
                gathered.skipped["too large or too compressed"] += 1
                continue
            try:
                with archive.open(info) as member:
                    data = member.read(min(info.file_size, MAX_MEMBER_BYTES) + 1)
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError, EOFError):
                gathered.skipped["unreadable zip member"] += 1
                continue
            if len(data) > info.file_size:  # it inflates to more than it declares: a crafted archive
                raise StudyError("The zip's members inflate to more than they declare; it was not unpacked.")
            gathered.add(info.filename, data)

