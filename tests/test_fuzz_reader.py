"""Fuzzing the image reader: mutated DICOM, PNG and JPEG bytes end in a slice or an ImageReadError, fast and small.

Hypothesis mutates small real files three ways: raw bytes (flips, overwrites, insertions, cuts), DICOM header
elements re-encoded by pydicom (sizes, frames, bit depths, photometrics, transfer syntaxes, rescale values, wrong
VRs, deletions), and PNG/JPEG headers rewritten with valid checksums so the mutation reaches the decoder. Every
input must end within ``PER_INPUT_S`` seconds under an address-space ceiling of ``MEMORY_HEADROOM`` above the test
process, in a well-formed slice or in the reader's own error with one of its specific messages (never the
last-resort "could not be read" one, which would mean an exception nobody foresaw).

    SPINECAD_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_reader.py   # a longer, randomised campaign

By default (CI) each strategy runs ``DEFAULT_EXAMPLES`` derandomised examples: the same inputs every run.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import resource
import signal
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from PIL import Image
from pydicom import uid

from spinecad.imaging import ImageReadError, Slice, read_slice
from spinecad.imaging.reader import UNFORESEEN_FAILURE
from tests.conftest import PYDICOM_TEST_FILES
from tests.corpus.make_corpus import with_raw_element

DEFAULT_EXAMPLES = 250
EXAMPLES = int(os.environ.get("SPINECAD_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
PER_INPUT_S = 5.0  # a 64x64 test file reads in milliseconds; seconds means a loop or a bomb
MEMORY_HEADROOM = 1536 * 2**20  # address space allowed above what the test process already maps
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # our own timer below: Hypothesis' deadline would flake on a loaded 2-core machine
    derandomize="SPINECAD_FUZZ_EXAMPLES" not in os.environ,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

DICOM_SEEDS = {
    "native 16-bit": "MR_small.dcm",
    "RLE": "MR_small_RLE.dcm",
    "JPEG 2000": "MR_small_jp2klossless.dcm",
    "JPEG-LS": "MR_small_jpeg_ls_lossless.dcm",
    "JPEG baseline RGB": "SC_rgb_small_odd_jpeg.dcm",
    "deflated": "image_dfl.dcm",
    "multi-frame": "rtdose.dcm",
    "RLE RGB 2-frame": "SC_rgb_rle_2frame.dcm",
}


def _raster_seeds() -> dict[str, bytes]:
    ramp = np.tile(np.linspace(0, 255, 24), (24, 1)).astype(np.uint8)

    def encode(image: Image.Image, fmt: str, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    return {
        "png 8-bit": encode(Image.fromarray(ramp, mode="L"), "PNG"),
        "png 16-bit": encode(Image.fromarray(ramp.astype(np.uint16) * 200), "PNG"),
        "png palette": encode(Image.fromarray(ramp, mode="L").convert("P"), "PNG"),
        "png rgb interlaced": encode(Image.fromarray(np.stack([ramp] * 3, -1), mode="RGB"), "PNG", optimize=False),
        "jpeg": encode(Image.fromarray(ramp, mode="L"), "JPEG", quality=80),
        "jpeg progressive rgb": encode(Image.fromarray(np.stack([ramp] * 3, -1), mode="RGB"), "JPEG",
                                       progressive=True),
    }


SEEDS: dict[str, bytes] = {name: (PYDICOM_TEST_FILES / file).read_bytes() for name, file in DICOM_SEEDS.items()}
RASTER_SEEDS = _raster_seeds()
ALL_SEEDS = {**SEEDS, **RASTER_SEEDS}


# ---- the property --------------------------------------------------------------------------------------------------

class _Overtime(BaseException):
    """Raised by the timer; a BaseException so that no ``except Exception`` in the reader can swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds``; pytest-timeout's own alarm (same timer) is re-armed afterwards."""

    def expire(signum, frame):
        raise _Overtime(f"the reader took more than {seconds} s")

    previous_handler = signal.signal(signal.SIGALRM, expire)
    started = time.monotonic()
    outer_remaining, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if outer_remaining:
            left = max(outer_remaining - (time.monotonic() - started), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


@pytest.fixture(scope="module", autouse=True)
def memory_ceiling() -> Iterator[None]:
    """Cap this process's address space a fixed headroom above its current size while the module fuzzes."""
    mapped = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    ceiling = mapped + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def check_reader(data: bytes) -> None:
    """The property every input must have: a well-formed slice, or a specific, short, person-readable refusal."""
    started = time.perf_counter()
    try:
        with _time_limit(PER_INPUT_S):
            result = read_slice(data)
    except ImageReadError as error:
        message = str(error)
        assert message != UNFORESEEN_FAILURE, "an exception nobody foresaw reached the last-resort handler"
        assert message and len(message) < 400 and "Traceback" not in message, message
        _event(f"refused: {message[:60]}")
        return
    finally:
        assert time.perf_counter() - started < PER_INPUT_S
    assert isinstance(result, Slice)
    pixels = result.pixels
    assert pixels.dtype == np.float32 and pixels.ndim == 2
    assert pixels.shape == (result.facts.rows, result.facts.columns)
    assert np.isfinite(pixels).all() and 0.0 <= pixels.min() and pixels.max() <= 1.0
    assert all(isinstance(warning, str) and warning for warning in result.warnings)
    _event(f"read: {result.facts.source_format}")


def _event(outcome: str) -> None:
    """Count an outcome for ``pytest --hypothesis-show-statistics`` (what the mutated inputs reached)."""
    with contextlib.suppress(InvalidArgument):  # outside a Hypothesis test there is nothing to count
        event(re.sub(r"\d+", "N", outcome))


def test_the_property_holds_on_the_unmutated_seeds():
    for name, data in ALL_SEEDS.items():
        check_reader(data)
        assert isinstance(read_slice(data), Slice), name


# ---- raw byte mutations --------------------------------------------------------------------------------------------

_CHUNKS = [b"\xff", b"\x00", b"\x7f", b"\x80", b"\xff\xff\xff\xff", b"\xfe\xff\x00\xe0"]  # ... an item tag
_OPS = ("flip", "flip", "set", "set", "insert", "delete", "duplicate", "truncate")  # cutting short ends the story


@st.composite
def byte_mutations(draw, family: str) -> bytes:
    """A seed file of ``family`` ("dicom" or "raster") with up to eight byte-level edits, biased towards the first
    kilobyte where headers live."""
    seeds = SEEDS if family == "dicom" else RASTER_SEEDS
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    # Past a DICOM preamble and magic mostly (edits there only ever give "not a DICOM"), and mostly in the header.
    first = 132 if data[128:132] == b"DICM" and draw(st.integers(0, 9)) else 0
    for _ in range(draw(st.integers(1, 8))):
        if len(data) <= first:
            break
        op = draw(st.sampled_from(_OPS))
        span = min(len(data), first + 1024) if draw(st.booleans()) else len(data)
        pos = draw(st.integers(first, span - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            chunk = draw(st.sampled_from(_CHUNKS) | st.binary(min_size=1, max_size=8))
            data[pos:pos + len(chunk)] = chunk
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 256))]
        elif op == "truncate":
            del data[pos:]
        else:
            length = draw(st.integers(1, 512))
            data[pos:pos] = data[pos:pos + length] * draw(st.integers(1, 4))
    return bytes(data)


@FUZZ_SETTINGS
@given(data=byte_mutations("dicom"))
def test_fuzz_dicom_bytes(data: bytes):
    check_reader(data)


@FUZZ_SETTINGS
@given(data=byte_mutations("raster"))
def test_fuzz_png_and_jpeg_bytes(data: bytes):
    check_reader(data)


# ---- DICOM header mutations ----------------------------------------------------------------------------------------

_EDGE_INTS = [0, 1, 2, 3, 4, 7, 8, 12, 15, 16, 31, 32, 33, 64, 255, 256, 4096, 4097, 8192, 8193, 32767, 65535,
              -1, 2**31 - 1, 2**32 - 1]
_INTS = st.sampled_from(_EDGE_INTS) | st.integers(-(2**31), 2**32)
_FLOATS = st.sampled_from([0.0, -0.0, 1e-300, 1e300, -1e300, 1.7e308, float("nan"), float("inf"), float("-inf")]) | \
    st.floats(allow_nan=True, allow_infinity=True)
_TEXT = st.sampled_from(["", " ", "MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR",
                         "HSV", "DOE^JANE", "YES", "NO", "1\\2\\3", "nan", "-", "\x00" * 4]) | st.text(max_size=20)
_SYNTAXES = st.sampled_from([str(s) for s in uid.AllTransferSyntaxes] + ["1.2.3.4", "", "not a uid"])
# keyword -> VR and the values worth trying there
_HEADER_FIELDS = {
    "Rows": ("US", _INTS), "Columns": ("US", _INTS), "NumberOfFrames": ("IS", _INTS | _TEXT),
    "BitsAllocated": ("US", _INTS), "BitsStored": ("US", _INTS), "HighBit": ("US", _INTS),
    "PixelRepresentation": ("US", _INTS), "SamplesPerPixel": ("US", _INTS), "PlanarConfiguration": ("US", _INTS),
    "PhotometricInterpretation": ("CS", _TEXT),
    "RescaleSlope": ("DS", _FLOATS | _TEXT), "RescaleIntercept": ("DS", _FLOATS | _TEXT),
    "WindowCenter": ("DS", _FLOATS | _TEXT), "WindowWidth": ("DS", _FLOATS | _TEXT),
    "ImageOrientationPatient": ("DS", st.lists(_FLOATS, min_size=0, max_size=7)),
    "PixelSpacing": ("DS", st.lists(_FLOATS, min_size=0, max_size=3)),
    "BurnedInAnnotation": ("CS", _TEXT),
}
_VRS = ["US", "SS", "UL", "DS", "IS", "LO", "CS", "OB", "UN", "FD", "SQ"]


@st.composite
def _header_edit(draw) -> tuple:
    kind = draw(st.sampled_from(["value", "value", "value", "delete", "wrong-vr", "syntax"]))
    if kind == "syntax":
        return ("syntax", draw(_SYNTAXES))
    keyword = draw(st.sampled_from([*_HEADER_FIELDS, "PixelData", "ModalityLUTSequence", "VOILUTSequence"]))
    if kind == "delete":
        return ("delete", keyword)
    if kind == "wrong-vr" or keyword not in _HEADER_FIELDS:
        return ("wrong-vr", keyword, draw(st.sampled_from(_VRS)), draw(st.binary(max_size=12)))
    vr, values = _HEADER_FIELDS[keyword]
    return ("value", keyword, vr, draw(values))


def _apply(ds: pydicom.Dataset, edit: tuple) -> None:
    if edit[0] == "delete":
        if edit[1] in ds:
            delattr(ds, edit[1])
    elif edit[0] == "value":
        _, keyword, vr, value = edit
        ds.add_new(pydicom.datadict.tag_for_keyword(keyword), vr, value)


def _encode(ds: pydicom.Dataset, wrong_vr: tuple | None) -> bytes | None:
    try:
        if wrong_vr:  # bytes pydicom would never write, spliced in where a placeholder was written
            _, keyword, vr, raw = wrong_vr
            return with_raw_element(ds, pydicom.datadict.tag_for_keyword(keyword), vr, raw)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
        return buffer.getvalue()
    except Exception:  # noqa: BLE001 - a value pydicom cannot encode at all is no input a reader will ever see
        return None


def _with_syntax(encoded: bytes, syntax: str) -> bytes:
    """The file with its Transfer Syntax UID element's value replaced by ``syntax`` (bytes, as a broken writer)."""
    at = encoded.find(b"\x02\x00\x10\x00UI")
    if at < 0:
        return encoded
    (length,) = struct.unpack_from("<H", encoded, at + 6)
    value = syntax.encode() + b"\0" * (len(syntax) % 2)
    return encoded[:at + 6] + struct.pack("<H", len(value)) + value + encoded[at + 8 + length:]


@st.composite
def dicom_header_mutations(draw) -> bytes:
    """A seed DICOM with up to five header elements changed, deleted, re-encoded with the wrong VR, or its
    transfer syntax swapped for another (without re-encoding the data, as a mislabelled file would be)."""
    seed = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    ds = pydicom.dcmread(io.BytesIO(seed))
    edits = draw(st.lists(_header_edit(), min_size=1, max_size=5))
    for edit in edits:
        try:
            _apply(ds, edit)
        except Exception:  # noqa: BLE001 - pydicom refused to hold the value: skip this edit
            continue
    encoded = _encode(ds, next((edit for edit in edits if edit[0] == "wrong-vr"), None)) or seed
    for edit in edits:
        if edit[0] == "syntax":
            encoded = _with_syntax(encoded, edit[1])
    if not draw(st.integers(0, 3)):  # a quarter of the time, cut the re-encoded file short as well
        encoded = encoded[: draw(st.integers(0, len(encoded)))]
    return encoded


@FUZZ_SETTINGS
@given(data=dicom_header_mutations())
def test_fuzz_dicom_header_elements(data: bytes):
    check_reader(data)


# ---- PNG and JPEG header mutations ---------------------------------------------------------------------------------

def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


_PNG_VALID_MODES = [(1, 0), (2, 0), (4, 0), (8, 0), (16, 0), (8, 2), (16, 2), (1, 3), (2, 3), (4, 3), (8, 3),
                    (8, 4), (16, 4), (8, 6), (16, 6)]  # (bit depth, colour type) pairs PNG allows


@st.composite
def png_header_mutations(draw) -> bytes:
    """A PNG whose IHDR (size, depth, colour type, interlace) is rewritten with a valid CRC; IDAT kept or replaced."""
    seed = RASTER_SEEDS[draw(st.sampled_from([n for n in RASTER_SEEDS if n.startswith("png")]))]
    width = draw(st.sampled_from([0, 1, 24, 8192, 8193, 50_000, 2**31 - 1]) | st.integers(0, 2**32 - 1))
    height = draw(st.sampled_from([0, 1, 24, 8192, 8193, 50_000, 2**31 - 1]) | st.integers(0, 2**32 - 1))
    if draw(st.integers(0, 4)):  # mostly a valid depth and colour type, so the decoder is reached
        depth, colour = draw(st.sampled_from(_PNG_VALID_MODES))
    else:
        depth, colour = draw(st.sampled_from([0, 1, 3, 32, 255])), draw(st.sampled_from([1, 5, 7, 255]))
    interlace = draw(st.sampled_from([0, 1, 2]))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    body = seed[8 + 25:]  # the chunks after the seed's IHDR
    if draw(st.booleans()):
        pixels = draw(st.binary(max_size=256)) if draw(st.booleans()) else b"\0" * draw(st.integers(0, 100_000))
        body = _png_chunk(b"IDAT", zlib.compress(pixels)) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + body


@st.composite
def jpeg_header_mutations(draw) -> bytes:
    """A JPEG whose frame header (SOF: height, width, components) is rewritten."""
    seed = bytearray(RASTER_SEEDS[draw(st.sampled_from([n for n in RASTER_SEEDS if n.startswith("jpeg")]))])
    sof = next(i for i in range(2, len(seed) - 1) if seed[i] == 0xFF and seed[i + 1] in (0xC0, 0xC2))
    struct.pack_into(">HH", seed, sof + 5, draw(_INTS.map(lambda v: v % 65536)), draw(_INTS.map(lambda v: v % 65536)))
    if draw(st.booleans()):
        seed[sof + 9] = draw(st.integers(0, 255))
    return bytes(seed)


@FUZZ_SETTINGS
@given(data=png_header_mutations() | jpeg_header_mutations())
def test_fuzz_png_and_jpeg_headers(data: bytes):
    check_reader(data)
