"""The image reader on real DICOM files (pydicom's own test files), PNG/JPEG variants and bad input."""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import UID

from spinecad.imaging import ImageReadError, Slice, read_slice
from tests.conftest import PYDICOM_TEST_FILES

# Every file pydicom ships offline that is MR or uses a compressed transfer syntax, with what the reader must do:
# "ok" (a slice) or the start of the message it must give. Reasons for refusals are in the messages.
_DECODE_FAILS = "The DICOM's pixel data could not be decoded"
EXPECTED = {
    "MR_small.dcm": "ok",
    "MR_small_RLE.dcm": "ok",
    "MR_small_bigendian.dcm": "ok",
    "MR_small_expb.dcm": "ok",
    "MR_small_implicit.dcm": "ok",
    "MR_small_jp2klossless.dcm": "ok",
    "MR_small_jpeg_ls_lossless.dcm": "ok",
    "MR_small_padded.dcm": "ok",
    "MR_truncated.dcm": _DECODE_FAILS,  # pixel data cut short
    "examples_overlay.dcm": "ok",
    "693_J2KI.dcm": "ok",
    "J2K_pixelrep_mismatch.dcm": "ok",
    "JPEG2000.dcm": "ok",
    "GDCMJ2K_TextGBR.dcm": "ok",
    "JPEGLSNearLossless_08.dcm": "ok",
    "JPEGLSNearLossless_16.dcm": "ok",
    "JPGExtended.dcm": "ok",
    "JPEG-lossy.dcm": _DECODE_FAILS,  # a 12-bit lossy JPEG variant that libjpeg refuses (pydicom needs GDCM)
    "JPEG2000-embedded-sequence-delimiter.dcm": _DECODE_FAILS,  # malformed encapsulation
    "SC_rgb_rle.dcm": "ok",
    "SC_rgb_jpeg_gdcm.dcm": "ok",
    "SC_rgb_gdcm_KY.dcm": "ok",
    "SC_rgb_jls_lossy_line.dcm": "ok",
    "SC_rgb_rle_2frame.dcm": "ok",
    "examples_jpeg2k.dcm": "ok",
    "examples_ybr_color.dcm": "ok",
    "rtdose_rle.dcm": "ok",
    "examples_palette.dcm": "The DICOM's photometric interpretation 'PALETTE COLOR' is not supported",
}


def _mr_or_compressed_files() -> list[Path]:
    chosen = []
    for path in sorted(PYDICOM_TEST_FILES.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - unreadable headers are covered by the bad-input tests
            continue
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        if ds.get("Modality") == "MR" or (syntax and UID(syntax).is_compressed):
            chosen.append(path)
    return chosen


def test_every_mr_or_compressed_test_file_is_listed():
    names = {path.name for path in _mr_or_compressed_files()}
    assert names, "pydicom ships no MR or compressed test files"
    unlisted = names - set(EXPECTED)
    assert len(unlisted) <= len(names) // 2  # the table covers the MR files and a broad compressed sample


@pytest.mark.parametrize("path", _mr_or_compressed_files(), ids=lambda p: p.name)
def test_pydicom_mr_and_compressed_files_read_or_are_refused_clearly(path: Path):
    expected = EXPECTED.get(path.name)
    try:
        result = read_slice(path)
    except ImageReadError as error:
        message = str(error)
        assert expected is None or expected != "ok", f"{path.name} was refused: {message}"
        if expected:
            assert message.startswith(expected), message
        assert "Traceback" not in message and len(message) < 400
        return
    assert expected in (None, "ok"), f"{path.name} should be refused with {expected!r}"
    assert isinstance(result, Slice)
    assert result.pixels.dtype == np.float32 and result.pixels.ndim == 2
    assert 0.0 <= result.pixels.min() and result.pixels.max() <= 1.0
    assert result.pixels.max() > result.pixels.min()


def test_mr_small_facts_window_and_no_identifying_data(pydicom_file):
    path = pydicom_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    result = read_slice(path.read_bytes())  # bytes, not a path
    facts = result.facts
    assert (facts.rows, facts.columns) == (64, 64)
    assert facts.orientation == "axial" and facts.window_source == "DICOM window"
    assert facts.window == (float(ds.WindowCenter), float(ds.WindowWidth))
    assert facts.pixel_spacing_mm == tuple(float(v) for v in ds.PixelSpacing)
    shown = repr(result) + repr(facts.as_dict())
    for identifying in (str(ds.PatientName), str(ds.PatientID), str(ds.get("StudyDate", "")) or "never"):
        assert identifying not in shown


def test_windowing_matches_dicom_linear_formula(pydicom_file):
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    raw = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    expected = np.clip((raw - (center - 0.5)) / (width - 1) + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1
    got = read_slice(pydicom_file("MR_small.dcm")).pixels
    np.testing.assert_allclose(got, expected, atol=2e-3)


def _modified(path: Path, **changes) -> bytes:
    ds = pydicom.dcmread(path)
    for name, value in changes.items():
        setattr(ds, name, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_monochrome1_is_inverted(pydicom_file):
    path = pydicom_file("MR_small.dcm")
    normal = read_slice(path).pixels
    inverted = read_slice(_modified(path, PhotometricInterpretation="MONOCHROME1")).pixels
    np.testing.assert_allclose(inverted, 1.0 - normal, atol=1e-6)


@pytest.mark.parametrize(
    ("cosines", "plane"),
    [([0, 1, 0, 0, 0, -1], "sagittal"), ([1, 0, 0, 0, 0, -1], "coronal"), ([1, 0, 0, 0, 1, 0], "axial")],
)
def test_orientation_and_not_axial_warning(pydicom_file, cosines, plane):
    result = read_slice(_modified(pydicom_file("MR_small.dcm"), ImageOrientationPatient=cosines))
    assert result.facts.orientation == plane
    warned = any("not axial" in warning for warning in result.warnings)
    assert warned == (plane != "axial")


def test_multiframe_uses_middle_frame_and_says_so(pydicom_file):
    ds = pydicom.dcmread(pydicom_file("rtdose.dcm"))
    frames = ds.pixel_array  # (15, 10, 10)
    result = read_slice(pydicom_file("rtdose.dcm"))
    assert result.facts.frames == 15 and result.facts.frame_used == 7
    assert any("15 frames" in warning and "middle" in warning for warning in result.warnings)
    middle = frames[7].astype(np.float64)
    assert np.corrcoef(result.pixels.ravel(), middle.ravel())[0, 1] > 0.99


def test_extensionless_dicom_path(tmp_path, pydicom_file):
    target = tmp_path / "IM000123"
    target.write_bytes(pydicom_file("MR_small.dcm").read_bytes())
    assert read_slice(target).facts.source_format == "DICOM"


# ---- PNG / JPEG ---------------------------------------------------------------------------------------------------

def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _noise(size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)


def _gradient(size: int = 64) -> np.ndarray:
    return np.tile(np.linspace(0, 1, size), (size, 1))


def test_png_8bit_greyscale_kept_as_stored():
    grey = (_gradient() * 255).round().astype(np.uint8)
    result = read_slice(_encode(Image.fromarray(grey, mode="L")))
    np.testing.assert_allclose(result.pixels, grey / 255.0, atol=1e-6)
    assert result.facts.source_format == "PNG" and result.facts.window_source == "as stored (8-bit)"


def test_png_16bit_gets_auto_window():
    values = (_gradient() * 4095).astype(np.uint16)
    result = read_slice(_encode(Image.fromarray(values)))
    assert result.facts.bits_stored == 16 and result.facts.window_source.startswith("auto")
    assert result.pixels.min() == 0.0 and result.pixels.max() == 1.0
    assert np.all(np.diff(result.pixels[0]) >= 0)  # the window is monotonic


def test_palette_and_rgb_png_and_jpeg():
    grey = (_gradient() * 255).astype(np.uint8)
    palette = Image.fromarray(grey, mode="L").convert("P")
    rgb_grey = Image.fromarray(np.stack([grey] * 3, axis=-1), mode="RGB")
    for data, fmt in ((_encode(palette), "PNG"), (_encode(rgb_grey), "PNG"), (_encode(rgb_grey, "JPEG"), "JPEG")):
        result = read_slice(data)
        assert result.facts.source_format == fmt
        assert np.corrcoef(result.pixels.ravel(), grey.ravel())[0, 1] > 0.99
        assert not any("Colour" in warning for warning in result.warnings)
    colourful = np.zeros((32, 32, 3), dtype=np.uint8)
    colourful[..., 0] = 200
    colourful[:16, :, 1] = 90
    result = read_slice(_encode(Image.fromarray(colourful, mode="RGB")))
    assert any("Colour image converted to greyscale" in warning for warning in result.warnings)


# ---- bad input ----------------------------------------------------------------------------------------------------

def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but which carries almost no data (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _no_pixel_data(path: Path) -> bytes:
    ds = pydicom.dcmread(path)
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _unknown_syntax(path: Path) -> bytes:
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = UID("1.2.3.4.5.6.7")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda f: b"", "The file is empty."),
        (lambda f: f("MR_small.dcm").read_bytes()[:-2000], "The DICOM's pixel data could not be decoded"),
        (lambda f: f("MR_small.dcm").read_bytes()[:200], "The DICOM file has no image in it"),
        (lambda f: _encode(Image.fromarray(_noise()))[:2000], "The PNG file is truncated"),
        (lambda f: _no_pixel_data(f("MR_small.dcm")), "The DICOM file has no image in it"),
        (lambda f: b"patient notes, not an image\n" * 20, "The file is not a DICOM, PNG or JPEG image."),
        (lambda f: _png_declaring(50_000, 50_000), "The image declares"),
        (lambda f: _unknown_syntax(f("MR_small.dcm")), "The DICOM's transfer syntax '1.2.3.4.5.6.7'"),
        (lambda f: _encode(Image.new("L", (8, 8), 7)), "The image is blank"),
        (lambda f: _encode(Image.fromarray((_gradient() * 255).astype(np.uint8)), "GIF"), "GIF images are not"),
    ],
    ids=["empty", "truncated-pixels", "truncated-header", "truncated-png", "no-pixel-data", "text", "png-bomb",
         "unknown-syntax", "blank", "gif"],
)
def test_bad_input_gets_a_typed_error_a_person_understands(pydicom_file, make, message):
    with pytest.raises(ImageReadError) as caught:
        read_slice(make(pydicom_file))
    assert str(caught.value).startswith(message), str(caught.value)


def test_text_file_named_dcm(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_text("not a dicom at all")
    with pytest.raises(ImageReadError, match="not a DICOM, PNG or JPEG"):
        read_slice(path)


def test_patient_data_never_reaches_messages_facts_or_logs(pydicom_file, caplog):
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-99172"
    ds.PatientBirthDate = "19540230"  # an invalid date: pydicom would warn quoting it
    ds.InstitutionName = "St Example Hospital"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    secrets = ("Doe", "Jane", "MRN-99172", "19540230", "St Example")
    with caplog.at_level(logging.DEBUG):
        good = read_slice(buffer.getvalue())
        with pytest.raises(ImageReadError) as caught:
            read_slice(buffer.getvalue()[:2000])
    text = repr(good.facts) + str(caught.value) + caplog.text
    for secret in secrets:
        assert secret not in text
