"""The app's example slices: a few small phantom images with known grades, committed under checkpoints/examples/.

    python -m train.examples [out_dir]     # default: checkpoints/examples

Each grade comes as a PNG and a DICOM; one MONOCHROME1 DICOM without a file extension and one sagittal DICOM
show how the app reads such files and the warning it gives. ``examples.csv`` (format: ``spinecad.examples``)
lists every file with its true grade. The app only reads these files; it never imports this module.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import JPEG2000Lossless

from spinecad.atomic import write_bytes_atomic
from spinecad.examples import Example, write_example_index
from spinecad.imaging import read_slice
from spinecad.labels import SEVERITIES
from train.phantom import (
    SAGITTAL_FOV_MM,
    SeriesIdentity,
    SliceGeometry,
    render_axial_scene,
    render_sagittal_slice,
    write_axial_dicom,
    write_mr_dicom,
)

LEVEL = "L4/L5"  # phantom anatomy does not change with the level; the grade is the one at this disc
IMAGE_SIZE = 192  # small files (tens of KB); the models resize to their own input size anyway
SEED = 20240
DEFAULT_EXAMPLES_DIR = Path("checkpoints") / "examples"  # relative to the current folder (the checkout)
# Synthetic identity only: no real person is behind any of these files.
IDENTITY = SeriesIdentity(description="Axial T2 (phantom example)", patient_name="PHANTOM^EXAMPLE")
SAGITTAL_GEOMETRY = SliceGeometry((0.0, -150.0, 150.0), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), SAGITTAL_FOV_MM / IMAGE_SIZE)



def write_examples(out_dir: str | Path) -> list[Example]:
    """Render the example slices into ``out_dir`` with an ``examples.csv`` index; return what was written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    examples: list[Example] = []
    for severity, grade in enumerate(SEVERITIES):
        stem = grade.split("/")[0].lower()  # "normal", "moderate", "severe"
        pixels = render_axial_scene(severity, rng, IMAGE_SIZE).pixels
        dicom = write_axial_dicom(out_dir / f"{stem}_axial.dcm", pixels, series=IDENTITY,
                                  transfer_syntax=JPEG2000Lossless)
        _write_png_as_models_see(dicom, out_dir / f"{stem}_axial.png")
        examples += [
            Example(f"{stem}_axial.dcm", f"{grade} · DICOM", "DICOM", LEVEL, grade,
                    "JPEG 2000 lossless DICOM with the scanner's window"),
            Example(f"{stem}_axial.png", f"{grade} · PNG", "PNG", LEVEL, grade,
                    "8-bit PNG export of the same kind of slice"),
        ]

    pixels = render_axial_scene(1, rng, IMAGE_SIZE).pixels
    write_axial_dicom(out_dir / "moderate_monochrome1", pixels, series=IDENTITY, photometric="MONOCHROME1",
                      transfer_syntax=JPEG2000Lossless)
    examples.append(Example("moderate_monochrome1", "Moderate · DICOM, no extension, MONOCHROME1", "DICOM", LEVEL,
                            SEVERITIES[1], "Inverted grey scale and no .dcm extension: read the same way"))

    spacing = SAGITTAL_GEOMETRY.pixel_spacing
    disc_rows = [(150.0 - z) / spacing for z in (72.0, 36.0, 0.0, -36.0, -72.0)]
    sagittal = render_sagittal_slice(rng, IMAGE_SIZE, canal_col=0.62 * IMAGE_SIZE, disc_rows=disc_rows)
    write_mr_dicom(out_dir / "sagittal.dcm", sagittal, series=IDENTITY, geometry=SAGITTAL_GEOMETRY,
                   instance_number=1, transfer_syntax=JPEG2000Lossless)
    examples.append(Example("sagittal.dcm", "Sagittal slice (shows a warning)", "DICOM", LEVEL, "n/a",
                            "Not an axial slice: the app warns that its grades are not meaningful"))

    write_example_index(out_dir, examples)
    return examples


def _write_png_as_models_see(dicom: Path, png: Path) -> None:
    # The PNG holds exactly what the reader makes of the DICOM (its window applied), as 8 bits.
    pixels = read_slice(dicom).pixels
    buffer = io.BytesIO()
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(buffer, format="PNG", optimize=True)
    write_bytes_atomic(png, buffer.getvalue())


if __name__ == "__main__":
    for written in write_examples(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_EXAMPLES_DIR):
        print(f"{written.file:24s} {written.true_grade:12s} {written.note}")
