"""The one entry point: bytes or a path in, a :class:`Slice` or an :class:`ImageReadError` out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from spinecad.imaging.dicom import read_dicom
from spinecad.imaging.errors import ImageReadError
from spinecad.imaging.limits import MAX_FILE_BYTES
from spinecad.imaging.raster import other_format_name, read_raster
from spinecad.imaging.slice import Slice

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# A DICOM stream without the 128-byte preamble starts with a group 0002 or 0008 tag (little endian).
_RAW_DICOM_STARTS = (b"\x02\x00", b"\x08\x00")
UNFORESEEN_FAILURE = "The file could not be read: it is corrupt in a way this reader does not recognise."


def read_slice(source: bytes | bytearray | str | os.PathLike[str] | BinaryIO) -> Slice:
    """Read a DICOM (with or without ``.dcm``), PNG or JPEG slice from bytes, a path or a binary file."""
    data = _read_bytes(source)
    if not data:
        raise ImageReadError("The file is empty.")
    try:
        return _decode(data)
    except ImageReadError:
        raise
    except Exception:  # noqa: BLE001 - last line of defence: a parser failure nobody foresaw is still refused
        # (tests/test_fuzz_reader.py fails on this message: every refusal found so far has its own.)
        raise ImageReadError(UNFORESEEN_FAILURE) from None


def _decode(data: bytes) -> Slice:
    if data[128:132] == b"DICM":
        return read_dicom(data)
    if data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC):
        return read_raster(data)
    if data[:2] in _RAW_DICOM_STARTS:
        return read_dicom(data, force=True)
    other = other_format_name(data)
    if other:
        raise ImageReadError(f"{other} images are not supported; upload a DICOM, PNG or JPEG slice.")
    raise ImageReadError("The file is not a DICOM, PNG or JPEG image.")


def _read_bytes(source: bytes | bytearray | str | os.PathLike[str] | BinaryIO) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        if len(source) > MAX_FILE_BYTES:
            raise ImageReadError(_too_large(len(source)))
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise ImageReadError(_too_large(size))
            return path.read_bytes()
        except FileNotFoundError:
            raise ImageReadError("The file does not exist (it may have been removed before it was read).") from None
        except IsADirectoryError:
            raise ImageReadError("A folder was given where one image file was expected.") from None
    data = source.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ImageReadError(_too_large(len(data)))
    return data


def _too_large(size: int) -> str:
    return f"The file is {size / 1e6:.0f} MB, more than the {MAX_FILE_BYTES // 2**20} MB allowed for one slice."
