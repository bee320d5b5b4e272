"""Deflated Explicit VR Little Endian files, inflated with a size limit.

pydicom inflates such a file whole with ``zlib.decompress`` before reading a single tag: a 500 KB upload
inflated to 1 GB, and 64 MB could ask for 64 GB. This module inflates at most ``MAX_INFLATED_BYTES`` and refuses
the file when there is more.
"""

from __future__ import annotations

import io
import zlib

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from spinecad.imaging.errors import ImageReadError
from spinecad.imaging.limits import MAX_INFLATED_BYTES

_STEP = 2**20


def read_deflated(data: bytes, *, force: bool) -> Dataset | None:
    """The dataset of a deflated DICOM file, inflated within the limit; None when the file is not deflated."""
    stream = io.BytesIO(data)
    try:
        read_preamble(stream, force)
        meta = _read_file_meta_info(stream)
        deflated = meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the normal reader
        return None
    if not deflated:
        return None
    body = inflate(data[stream.tell():])
    dataset = pydicom.dcmread(io.BytesIO(body), force=True)
    # The inflated body is plain Explicit VR Little Endian: decode its pixels as such.
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta = meta
    return dataset


def inflate(compressed: bytes) -> bytes:
    """Raw-deflate ``compressed`` (no zlib header, as PS3.5 A.5 specifies) into at most ``MAX_INFLATED_BYTES``.

    Inflated a megabyte at a time, so a bomb is stopped with no more than the limit held.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    parts: list[bytes] = []
    inflated, pending = 0, compressed
    try:
        while True:
            part = inflater.decompress(pending, _STEP)
            pending = inflater.unconsumed_tail
            inflated += len(part)
            if inflated > MAX_INFLATED_BYTES:
                raise ImageReadError(
                    f"The deflated DICOM file inflates to more than {MAX_INFLATED_BYTES // 2**20} MB; it was not read."
                )
            parts.append(part)
            if not pending and len(part) < _STEP:
                break
    except zlib.error:
        raise ImageReadError("The deflated DICOM file is truncated or corrupt: it could not be inflated.") from None
    return b"".join(parts)
