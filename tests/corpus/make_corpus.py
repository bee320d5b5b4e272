"""Write the corpus of nasty input files that tests/test_corpus.py reads (and print what the reader says of each).

    python -m tests.corpus.make_corpus            # rewrite the files beside this script
    python -m tests.corpus.make_corpus --report   # the table: file -> outcome and message (for expectations.json)

Every file is synthetic (a 32 x 32 phantom, or a frame taken from pydicom's own test files) and small; the
identifying header values in ``burned_in_annotation.dcm`` are invented. ``expectations.json`` is written by hand
from the report after reading it: it is the specification, this script only makes the inputs.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import (
    MPEG2MPML,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

CORPUS = Path(__file__).resolve().parent
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SIDE = 32
INVENTED_PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRN-99172", "PatientBirthDate": "19540230",
                    "InstitutionName": "St Example Hospital"}


def phantom(side: int = SIDE) -> np.ndarray:
    """A bright disc (the canal) on a ramp: contrast everywhere, 12-bit values."""
    y, x = np.mgrid[:side, :side]
    disc = ((y - side / 2) ** 2 + (x - side / 2) ** 2) < (side / 4) ** 2
    return (x * 40 + disc * 2000).astype(np.uint16)


def mr(pixels: np.ndarray | None = None, syntax: str = ExplicitVRLittleEndian, **values) -> Dataset:
    """A minimal axial MR slice dataset (no patient data unless given)."""
    pixels = phantom() if pixels is None else pixels
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = pydicom.uid.MRImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.Modality = "MR"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def encode(ds: Dataset, *, implicit: bool | None = None, little: bool = True) -> bytes:
    buffer = io.BytesIO()
    if implicit is None:
        ds.save_as(buffer, enforce_file_format=True)
    else:
        ds.save_as(buffer, implicit_vr=implicit, little_endian=little, enforce_file_format=False, force_encoding=True)
    return buffer.getvalue()


def with_raw_element(ds: Dataset, tag: int, vr: str, raw: bytes) -> bytes:
    """``ds`` encoded Explicit VR Little Endian with element ``tag`` holding exactly ``vr`` and ``raw``, however
    wrong: pydicom would refuse to write such an element, so a placeholder is written and its bytes replaced."""
    marker = b"\x01PLACEHOLDER-\x01"  # an even length: no padding byte
    ds.add_new(tag, "LO", marker.decode("latin-1"))
    tag_bytes = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    encoded = encode(ds)
    placeholder = tag_bytes + b"LO" + struct.pack("<H", len(marker)) + marker
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"):
        element = tag_bytes + vr.encode() + b"\0\0" + struct.pack("<I", len(raw)) + raw
    else:
        element = tag_bytes + vr.encode() + struct.pack("<H", len(raw)) + raw
    assert encoded.count(placeholder) == 1
    return encoded.replace(placeholder, element)


def raster(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height over almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def with_sof_size(jpeg: bytes, height: int, width: int, marker: int | None = None) -> bytes:
    """A JPEG (or JPEG-LS) stream whose frame header declares another size (and, optionally, SOF marker)."""
    data = bytearray(jpeg)
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC3, 0xF7))
    struct.pack_into(">HH", data, sof + 5, height, width)
    if marker is not None:
        data[sof + 1] = marker
    return bytes(data)


def with_siz_size(codestream: bytes, height: int, width: int) -> bytes:
    data = bytearray(codestream)
    siz = data.find(b"\xff\x4f\xff\x51")
    struct.pack_into(">II", data, siz + 8, width, height)
    return bytes(data)


def compressed_mr(frame: bytes, syntax: str, *, bits: int = 16, rows: int = SIDE, columns: int = SIDE) -> bytes:
    ds = mr(syntax=syntax)
    ds.Rows, ds.Columns = rows, columns
    if bits == 8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return encode(ds)


def pydicom_frame(name: str) -> bytes:
    ds = pydicom.dcmread(PYDICOM_FILES / name)
    return get_frame(ds.PixelData, 0, number_of_frames=1)


def rle_frame(segment: bytes) -> bytes:
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    return header + segment + segment


# ---- the cases ---------------------------------------------------------------------------------------------------

def _dicom_cases() -> dict[str, Callable[[], bytes]]:
    grey8 = (phantom() // 10).clip(0, 255).astype(np.uint8)
    jpeg_frame = raster(Image.fromarray(grey8, mode="L"), "JPEG", quality=90)
    j2k = mr()
    j2k.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    j2k_frame = get_frame(j2k.PixelData, 0, number_of_frames=1)
    rle = mr()
    rle.compress(RLELossless, encoding_plugin="pydicom")
    ok = mr()

    def no_pixel_data() -> bytes:
        ds = mr()
        del ds.PixelData
        return encode(ds)

    def float_pixel_data() -> bytes:
        ds = mr()
        del ds.PixelData
        ds.FloatPixelData = phantom().astype("<f4").tobytes()
        return encode(ds)

    def wrong_vr_rows_text() -> bytes:
        ds = mr()
        ds.add_new(0x00280010, "LO", "thirty-two")
        return encode(ds)

    def wrong_vr_rows_three_bytes() -> bytes:
        return with_raw_element(mr(), 0x00280010, "US", b"\x20\x00\x00")  # an US value is two bytes

    def syntax(uid: str) -> bytes:
        ds = mr()
        ds.file_meta.TransferSyntaxUID = uid
        return encode(ds, implicit=False)

    def implicit_labelled_explicit() -> bytes:
        ds = mr()  # the file meta says Explicit VR; the dataset is written Implicit VR, as broken writers do
        return encode(ds, implicit=True)

    def rgb(samples_per_pixel: int) -> bytes:
        ds = mr()
        grey = (phantom() // 16).clip(0, 255).astype(np.uint8)
        colour = np.stack([grey, grey // 2, 255 - grey], axis=-1)
        ds.PhotometricInterpretation = "RGB"
        ds.SamplesPerPixel = samples_per_pixel
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PlanarConfiguration = 0
        ds.PixelData = (colour if samples_per_pixel == 3 else grey).tobytes()
        return encode(ds)

    def multiframe() -> bytes:
        frames = np.stack([phantom() * 0, phantom(), phantom() // 2])
        ds = mr(frames)
        ds.NumberOfFrames = 3
        return encode(ds)

    def burned_in() -> bytes:
        ds = mr(BurnedInAnnotation="YES", **INVENTED_PATIENT)
        return encode(ds)

    def rle_tiny_declaring_40_megapixels() -> bytes:
        return compressed_mr(rle_frame(b"\x81\x00" * 8), RLELossless, rows=8000, columns=5000)

    def rle_overlong_segments() -> bytes:
        # Each segment: the real plane, then runs that would add 64x its size (pydicom's decoder kept them all).
        data = bytearray(get_frame(rle.PixelData, 0, number_of_frames=1))
        count, *offsets = struct.unpack_from("<16I", data)
        segments = [bytes(data[a:b]) for a, b in zip(offsets[:count], [*offsets[1:count], len(data)], strict=True)]
        padded = [s + b"\x81\x00" * (SIDE * SIDE // 64) for s in segments]
        starts = np.cumsum([64] + [len(s) for s in padded])[:-1]
        header = struct.pack("<16I", count, *starts, *([0] * (15 - count)))
        return compressed_mr(header + b"".join(padded), RLELossless)

    def deflate_bomb() -> bytes:
        ds = mr()
        ds.add_new(0x00091010, "OB", b"\0" * (65 * 2**20))  # private filler: inflates past the 64 MB limit
        return encode_deflated(ds)

    def encode_deflated(ds: Dataset) -> bytes:
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        return encode(ds)

    return {
        "ok_axial.dcm": lambda: encode(ok),
        "raw_meta_no_preamble": lambda: encode(mr())[128 + 4:],  # file meta, no preamble or "DICM", no .dcm
        "raw_dataset_no_meta": lambda: encode(mr(), implicit=True),  # an ACR-NEMA-style bare dataset
        "big_endian.dcm": lambda: encode(mr(syntax=ExplicitVRBigEndian), implicit=False, little=False),
        "implicit_labelled_explicit.dcm": implicit_labelled_explicit,
        "deflated.dcm": lambda: encode_deflated(mr()),
        "monochrome1.dcm": lambda: encode(mr(PhotometricInterpretation="MONOCHROME1")),
        "rgb.dcm": lambda: rgb(3),
        "multiframe.dcm": multiframe,
        "sagittal.dcm": lambda: encode(mr(ImageOrientationPatient=[0, 1, 0, 0, 0, -1])),
        "burned_in_annotation.dcm": burned_in,
        "invalid_window.dcm": lambda: encode(mr(WindowCenter=100, WindowWidth=0)),
        "rle.dcm": lambda: encode(rle),
        "rle_overlong_segments.dcm": rle_overlong_segments,
        "jpeg2000.dcm": lambda: encode(j2k),
        "truncated_pixel_data.dcm": lambda: encode(ok)[:-700],
        "truncated_header.dcm": lambda: encode(ok)[:300],
        "no_pixel_data.dcm": no_pixel_data,
        "float_pixel_data.dcm": float_pixel_data,
        "wrong_vr_rows_text.dcm": wrong_vr_rows_text,
        "wrong_vr_rows_three_bytes.dcm": wrong_vr_rows_three_bytes,
        "unknown_transfer_syntax.dcm": lambda: syntax("1.2.3.4.5.6.7"),
        "mpeg2_transfer_syntax.dcm": lambda: compressed_mr(b"\x00\x00\x01\xb3" + bytes(60), MPEG2MPML, bits=8),
        "rgb_declared_one_sample.dcm": lambda: rgb(1),
        "zero_variance.dcm": lambda: encode(mr(phantom() * 0 + 500)),
        "nan_rescale.dcm": lambda: encode(mr(RescaleSlope="NaN", RescaleIntercept=0)),
        "overflow_rescale.dcm": lambda: encode(mr(RescaleSlope="1e308", RescaleIntercept=0)),
        "palette_color.dcm": lambda: encode(mr(PhotometricInterpretation="PALETTE COLOR")),
        "header_text_as_photometric.dcm": lambda: encode(mr(PhotometricInterpretation="DOE^JANE")),
        "negative_frames.dcm": lambda: encode(mr(NumberOfFrames=-1)),
        "bomb_rows_columns.dcm": lambda: encode(mr(Rows=65535, Columns=65535)),
        "bomb_frames.dcm": lambda: encode(mr(NumberOfFrames=1_000_000)),
        "bomb_multiframe_little_data.dcm": lambda: encode(mr(Rows=4096, Columns=4096, NumberOfFrames=4096)),
        "bomb_deflate.dcm": deflate_bomb,
        "bomb_rle_tiny_data.dcm": rle_tiny_declaring_40_megapixels,
        "bomb_jpeg_baseline_codestream.dcm": lambda: compressed_mr(with_sof_size(jpeg_frame, 60000, 60000),
                                                                   JPEGBaseline8Bit, bits=8),
        "bomb_jpeg_ls_codestream.dcm": lambda: compressed_mr(
            with_sof_size(pydicom_frame("MR_small_jpeg_ls_lossless.dcm"), 60000, 60000),
            pydicom.uid.JPEGLSLossless, rows=64, columns=64),
        "bomb_jpeg2000_codestream.dcm": lambda: compressed_mr(with_siz_size(j2k_frame, 60000, 60000),
                                                              JPEG2000Lossless),
        "jpeg_progressive_frame.dcm": lambda: compressed_mr(
            raster(Image.fromarray(grey8, mode="L"), "JPEG", progressive=True), JPEGBaseline8Bit, bits=8),
        "implicit_vr.dcm": lambda: encode(mr(syntax=ImplicitVRLittleEndian), implicit=True),
    }


def _raster_cases() -> dict[str, Callable[[], bytes]]:
    grey8 = (phantom() // 10).clip(0, 255).astype(np.uint8)
    colour = np.stack([grey8, grey8 // 2, 255 - grey8], axis=-1)
    jpeg = raster(Image.fromarray(grey8, mode="L"), "JPEG", quality=90)
    noise = np.random.default_rng(0).integers(0, 255, (SIDE, SIDE), dtype=np.uint8)
    return {
        "grey8.png": lambda: raster(Image.fromarray(grey8, mode="L"), "PNG"),
        "grey16.png": lambda: raster(Image.fromarray(phantom()), "PNG"),
        "colour.png": lambda: raster(Image.fromarray(colour, mode="RGB"), "PNG"),
        "grey.jpg": lambda: jpeg,
        "blank.png": lambda: raster(Image.new("L", (SIDE, SIDE), 7), "PNG"),
        "truncated.png": lambda: raster(Image.fromarray(noise), "PNG")[:400],
        "truncated.jpg": lambda: jpeg[: len(jpeg) // 2],
        "bomb_50000x50000.png": lambda: png_declaring(50_000, 50_000),
        "bomb_9000x9000.png": lambda: png_declaring(9000, 9000),
        "bomb_60000x60000.jpg": lambda: with_sof_size(jpeg, 60000, 60000),
        "image.gif": lambda: raster(Image.fromarray(grey8, mode="L"), "GIF"),
        "image.tiff": lambda: raster(Image.fromarray(grey8, mode="L"), "TIFF"),
        "report.dcm": lambda: b"Radiology report: not an image.\n" * 8,
        "empty.dcm": lambda: b"",
    }


def cases() -> dict[str, Callable[[], bytes]]:
    """File name -> function writing its bytes."""
    return {**_dicom_cases(), **_raster_cases()}


def main(argv: list[str]) -> None:
    if "--report" in argv:
        from spinecad.imaging import ImageReadError, read_slice

        for name in cases():
            try:
                result = read_slice(CORPUS / name)
                print(f"{name}\tread\t{list(result.warnings)}")
            except ImageReadError as error:
                print(f"{name}\trefused\t{error}")
        return
    for name, make in cases().items():
        (CORPUS / name).write_bytes(make())
        print(f"{name}: {(CORPUS / name).stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
