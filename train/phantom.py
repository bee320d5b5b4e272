"""Synthetic lumbar MRI studies in the exact RSNA 2024 Kaggle layout, with known canal grades and geometry."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, MRImageStorage, RLELossless, generate_uid
from scipy.ndimage import gaussian_filter

from spinecad.atomic import atomic_path, write_text_atomic
from spinecad.labels import LEVEL_KEYS, LEVELS, SEVERITIES

MAX_VALUE = 4095  # 12-bit stored values
AXIAL_FOV_MM, SAGITTAL_FOV_MM = 180.0, 300.0
LEVEL_GAP_MM = 36.0  # disc-to-disc distance along the lumbar spine
AXIAL_OFFSETS_MM = (4.0, 0.0, -4.0)  # three slices per level, superior first; the middle one is at the disc
SAGITTAL_GAP_MM = 4.0
# Dural sac (antero-posterior, transverse) semi-axes as fractions of the image size, per grade.
SAC_SEMI_AXES = ((0.045, 0.060), (0.024, 0.055), (0.008, 0.048))
# What each study's special level exercises in the index; the rest of its levels have agreeing points.
SCENARIOS: tuple[str, ...] = (
    "agree", "left_only", "disagree", "right_only", "no_points",
    "agree", "disagree", "no_points_no_canal_point", "missing_label", "agree",
)
CONDITIONS: tuple[str, ...] = (
    "spinal_canal_stenosis", "left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing",
    "left_subarticular_stenosis", "right_subarticular_stenosis",
)


@dataclass(frozen=True)
class AxialScene:
    """A rendered axial slice with its ground truth: the dural sac mask and centre (row, col)."""

    pixels: np.ndarray  # uint16, 0..4095
    canal_mask: np.ndarray  # bool, True inside the dural sac
    canal_centre: tuple[float, float]


@dataclass(frozen=True)
class SliceGeometry:
    """Where a slice lies in patient space (LPS, mm): first pixel centre, row/column directions, spacing."""

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: float
    thickness: float = 4.0


@dataclass(frozen=True)
class SeriesIdentity:
    """The identifiers every file of one series shares."""

    description: str = "Axial T2"
    series_number: int = 1
    patient_name: str = "PHANTOM^0001"
    study_uid: str = ""
    series_uid: str = ""
    frame_uid: str = ""


@dataclass(frozen=True)
class PhantomSummary:
    """What was written: ``truth`` has one row per at-disc axial slice (study, level, series, instance...)."""

    out_dir: Path
    n_studies: int
    n_images: int
    truth: pd.DataFrame
    files_by_kind: dict[str, list[Path]]  # "rle", "jpeg2000", "monochrome1", "plain"


def _ellipse(rows: np.ndarray, cols: np.ndarray, centre: tuple[float, float], semi: tuple[float, float]) -> np.ndarray:
    return ((rows - centre[0]) / semi[0]) ** 2 + ((cols - centre[1]) / semi[1]) ** 2 <= 1.0


def _finish(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur (partial volume), scale, add Rician noise and quantise to 12 bits."""
    signal = gaussian_filter(signal, sigma=0.8) * rng.uniform(0.75, 1.1)
    sigma = rng.uniform(30.0, 80.0)
    noise = rng.standard_normal((2, *signal.shape), dtype=np.float32) * sigma
    # Magnitude of a complex signal with Gaussian noise in both channels is Rician.
    magnitude = np.hypot(signal + noise[0], noise[1])
    return np.clip(magnitude, 0, MAX_VALUE).astype(np.uint16)


def render_axial_scene(
    severity: int, rng: np.random.Generator, size: int = 256, *, canal_centre: tuple[float, float] | None = None
) -> AxialScene:
    """Render an axial T2 slice at a disc whose dural sac narrows with ``severity`` (0, 1, 2)."""
    if canal_centre is None:
        canal_centre = (size * rng.normal(0.56, 0.025), size * rng.normal(0.5, 0.025))
    angle = math.radians(rng.uniform(-10.0, 10.0))
    grid_r, grid_c = np.mgrid[0:size, 0:size].astype(np.float32)
    d_r, d_c = grid_r - canal_centre[0], grid_c - canal_centre[1]
    # Shapes are drawn in a frame rotated about the canal centre; (0, 0) is the centre of the sac.
    r = (math.cos(angle) * d_r - math.sin(angle) * d_c) / size
    c = (math.sin(angle) * d_r + math.cos(angle) * d_c) / size
    scale = rng.uniform(0.9, 1.1)
    signal = np.full((size, size), 20.0, dtype=np.float32)
    signal[_ellipse(r, c, (-0.1, 0.0), (0.4 * scale, 0.47 * scale))] = rng.uniform(1900, 2400)  # fat
    signal[_ellipse(r, c, (-0.1, 0.0), (0.34 * scale, 0.41 * scale))] = rng.uniform(650, 900)  # muscle
    for side in (-1, 1):
        signal[_ellipse(r, c, (0.11, side * 0.11), (0.08, 0.075))] = rng.uniform(550, 750)  # paraspinal
        signal[_ellipse(r, c, (0.055, side * 0.045), (0.05, 0.014))] = rng.uniform(250, 400)  # lamina
    signal[_ellipse(r, c, (0.12, 0.0), (0.07, 0.012))] = rng.uniform(250, 400)  # spinous process
    signal[_ellipse(r, c, (-0.19, 0.0), (0.12, 0.16))] = rng.uniform(700, 900)  # annulus
    signal[_ellipse(r, c, (-0.19, 0.0), (0.075, 0.105))] = rng.uniform(1500, 2000)  # nucleus
    signal[_ellipse(r, c, (0.0, 0.0), (0.06, 0.085))] = rng.uniform(1800, 2300)  # epidural fat
    jitter = rng.uniform(0.85, 1.15)
    semi_ap, semi_lr = (axis * jitter for axis in SAC_SEMI_AXES[severity])
    canal = _ellipse(r, c, (0.0, 0.0), (semi_ap, semi_lr))
    if severity > 0:
        # A bulging disc and thick ligaments press the sac into a crescent, then a slit.
        canal &= ~_ellipse(r, c, (-1.6 * semi_ap, 0.0), (1.4 * semi_ap, 0.6 * semi_lr))
        signal[_ellipse(r, c, (-0.055, 0.0), (0.03 + 0.012 * severity, 0.07))] = rng.uniform(700, 900)
    signal[canal] = rng.uniform(2800, 3500)  # CSF
    return AxialScene(pixels=_finish(signal, rng), canal_mask=canal, canal_centre=tuple(map(float, canal_centre)))


def render_sagittal_slice(rng: np.random.Generator, size: int, canal_col: float, disc_rows: list[float]) -> np.ndarray:
    """Pixels of a mid-sagittal T2 slice: vertebral bodies, discs and a bright canal column."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    signal = np.full((size, size), rng.uniform(650, 850), dtype=np.float32)
    body = (cols > canal_col - 0.2 * size) & (cols < canal_col - 0.04 * size)
    signal[body] = rng.uniform(1200, 1600)
    for disc_row in disc_rows:
        signal[body & (np.abs(rows - disc_row) < 0.02 * size)] = rng.uniform(1600, 2000)
    signal[np.abs(cols - canal_col) < 0.03 * size] = rng.uniform(2800, 3400)
    return _finish(signal, rng)


def write_mr_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    series: SeriesIdentity,
    geometry: SliceGeometry,
    instance_number: int,
    photometric: str = "MONOCHROME2",
    transfer_syntax: UID = ExplicitVRLittleEndian,
) -> Path:
    """Write a 12-bit MR slice as a DICOM file, atomically; MONOCHROME1 stores inverted values."""
    stored = (MAX_VALUE - pixels if photometric == "MONOCHROME1" else pixels).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = series.study_uid or generate_uid()
    ds.SeriesInstanceUID = series.series_uid or generate_uid()
    ds.FrameOfReferenceUID = series.frame_uid or generate_uid()
    ds.PatientName, ds.PatientID = series.patient_name, series.patient_name.replace("^", "")
    ds.Modality, ds.SeriesDescription, ds.BodyPartExamined = "MR", series.description, "LSPINE"
    ds.SeriesNumber, ds.InstanceNumber = series.series_number, instance_number
    ds.ImagePositionPatient = [round(v, 4) for v in geometry.position]
    ds.ImageOrientationPatient = [round(v, 6) for v in geometry.orientation]
    ds.PixelSpacing = [round(geometry.pixel_spacing, 6)] * 2
    ds.SliceThickness = geometry.thickness
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "US"
    ds.WindowCenter, ds.WindowWidth = 1600, 3200
    ds.PixelData = stored.tobytes()
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)


def write_axial_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    instance_number: int = 1,
    series: SeriesIdentity | None = None,
    geometry: SliceGeometry | None = None,
    photometric: str = "MONOCHROME2",
    transfer_syntax: UID = ExplicitVRLittleEndian,
) -> Path:
    """Write an axial T2 slice as DICOM; without ``geometry`` it lies at z=0 centred on the patient axis."""
    if geometry is None:
        spacing = AXIAL_FOV_MM / pixels.shape[1]
        half = spacing * (pixels.shape[1] - 1) / 2
        geometry = SliceGeometry((-half, -half, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), spacing)
    return write_mr_dicom(
        path, pixels, series=series or SeriesIdentity(), geometry=geometry,
        instance_number=instance_number, photometric=photometric, transfer_syntax=transfer_syntax,
    )


@dataclass(frozen=True)
class _Study:
    """Random layout of one phantom study: ids, level heights, grades and the role of each level."""

    index: int
    study_id: int
    grades: tuple[int, ...]
    scenario: str
    special_level: int
    level_z: tuple[float, ...]
    canal_y: float
    has_axial: bool
    second_axial: bool
    transfer_syntax: UID
    photometric: str


def _plan_study(index: int, study_id: int, rng: np.random.Generator, grade_mix: tuple[float, ...]) -> _Study:
    grades = tuple(int(g) for g in rng.choice(3, size=len(LEVELS), p=np.asarray(grade_mix) / sum(grade_mix)))
    syntax = {2: RLELossless, 4: JPEG2000Lossless}.get(index % 10, ExplicitVRLittleEndian)
    return _Study(
        index=index, study_id=study_id, grades=grades,
        scenario=SCENARIOS[index % len(SCENARIOS)], special_level=(index // len(SCENARIOS)) % len(LEVELS),
        level_z=tuple(2 * LEVEL_GAP_MM - LEVEL_GAP_MM * k + rng.normal(0, 1.5) for k in range(len(LEVELS))),
        canal_y=30.0 + rng.normal(0, 3.0), has_axial=index % 30 != 9, second_axial=index % 30 == 6,
        transfer_syntax=syntax, photometric="MONOCHROME1" if index % 4 == 1 else "MONOCHROME2",
    )


def _subarticular_points(study: _Study, level: int, series_id: int, at_instance: int, canal: tuple, spacing: float):
    """Left/right subarticular points (Kaggle coordinate rows) for one level, following its scenario."""
    scenario = study.scenario if level == study.special_level else "agree"
    lateral = 12.0 / spacing  # lateral recess ~12 mm from the midline; patient left is +column
    instances = {"left": at_instance, "right": at_instance}
    sides = {
        "agree": ("left", "right"), "disagree": ("left", "right"), "left_only": ("left",), "right_only": ("right",),
    }
    if scenario == "disagree":
        # One reader picked the next slice down; which side erred is random so the fallback is not always right.
        instances["left" if study.index % 20 < 10 else "right"] += 1
    return [
        (study.study_id, series_id, instances[side], f"{side.capitalize()} Subarticular Stenosis", LEVELS[level],
         round(canal[1] + (lateral if side == "left" else -lateral), 3), round(canal[0], 3))
        for side in sides.get(scenario, ())
    ]


def _write_study(study: _Study, root: Path, rng: np.random.Generator, size: int, ids: list[int]):
    """Write one study's images; return its series rows, coordinate rows, truth rows and files by kind."""
    series_rows, point_rows, truth_rows = [], [], []
    files: dict[str, list[Path]] = {"rle": [], "jpeg2000": [], "monochrome1": [], "plain": []}
    kind = {RLELossless: "rle", JPEG2000Lossless: "jpeg2000"}.get(study.transfer_syntax, "plain")
    study_uid, frame_uid, name = generate_uid(), generate_uid(), f"PHANTOM^{study.index + 1:04d}"

    def write(path: Path, pixels: np.ndarray, identity: SeriesIdentity, geometry: SliceGeometry, instance: int):
        write_mr_dicom(path, pixels, series=identity, geometry=geometry, instance_number=instance,
                       photometric=study.photometric, transfer_syntax=study.transfer_syntax)
        files["monochrome1" if study.photometric == "MONOCHROME1" else kind].append(path)

    # Sagittal T2/STIR: slices across x, the canal point on the midline slice.
    sag_id, n_sag = ids.pop(), int(rng.integers(5, 10))
    sag_spacing = SAGITTAL_FOV_MM / size
    y0, z0 = study.canal_y - 0.62 * SAGITTAL_FOV_MM, SAGITTAL_FOV_MM / 2
    canal_col = (study.canal_y - y0) / sag_spacing
    disc_rows = [(z0 - z) / sag_spacing for z in study.level_z]
    sag_identity = SeriesIdentity("Sagittal T2/STIR", 1, name, study_uid, generate_uid(), frame_uid)
    mid = n_sag // 2 + 1
    sag_pixels = render_sagittal_slice(rng, size, canal_col, disc_rows)
    for instance in range(1, n_sag + 1):
        x = (instance - mid) * SAGITTAL_GAP_MM
        geometry = SliceGeometry((x, y0, z0), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), sag_spacing, SAGITTAL_GAP_MM)
        write(root / str(sag_id) / f"{instance}.dcm", sag_pixels, sag_identity, geometry, instance)
    series_rows.append((study.study_id, sag_id, "Sagittal T2/STIR"))
    for level in range(len(LEVELS)):
        if not (level == study.special_level and study.scenario == "no_points_no_canal_point"):
            point_rows.append((study.study_id, sag_id, mid, "Spinal Canal Stenosis", LEVELS[level],
                               round(canal_col, 3), round(disc_rows[level], 3)))

    axial_plans = [(ids.pop(), range(len(LEVELS)))] if study.has_axial else []
    if study.second_axial:
        axial_plans.append((ids.pop(), range(3, len(LEVELS))))  # a second stack over the lowest two discs
    ax_spacing = AXIAL_FOV_MM / size
    for number, (series_id, levels) in enumerate(axial_plans, start=2):
        identity = SeriesIdentity("Axial T2", number, name, study_uid, generate_uid(), frame_uid)
        tilt = math.radians(rng.uniform(-8.0, 8.0))
        row_dir, col_dir = np.array([1.0, 0.0, 0.0]), np.array([0.0, math.cos(tilt), math.sin(tilt)])
        normal = np.cross(row_dir, col_dir)  # points superior, so +offset slices lie above the disc
        series_rows.append((study.study_id, series_id, "Axial T2"))
        for position, level in enumerate(levels):
            scene = render_axial_scene(study.grades[level], rng, size)
            canal_point = np.array([0.0, study.canal_y, study.level_z[level]])
            # Place the slice so the rendered sac centre is exactly the canal point on the sagittal series.
            row, col = scene.canal_centre
            at_disc = canal_point - col * ax_spacing * row_dir - row * ax_spacing * col_dir
            for offset_index, offset in enumerate(AXIAL_OFFSETS_MM):
                instance = position * len(AXIAL_OFFSETS_MM) + offset_index + 1
                pixels = scene.pixels if offset == 0.0 else render_axial_scene(0, rng, size).pixels
                geometry = SliceGeometry(tuple(at_disc + offset * normal), (*row_dir, *col_dir), ax_spacing)
                write(root / str(series_id) / f"{instance}.dcm", pixels, identity, geometry, instance)
            at_instance = position * len(AXIAL_OFFSETS_MM) + AXIAL_OFFSETS_MM.index(0.0) + 1
            truth_rows.append({
                "study_id": study.study_id, "level": LEVELS[level], "severity": SEVERITIES[study.grades[level]],
                "scenario": study.scenario if level == study.special_level else "agree",
                "series_id": series_id, "instance_number": at_instance,
                "canal_row": scene.canal_centre[0], "canal_col": scene.canal_centre[1],
            })
            # Points go on the last stack that covers the level, so a second series is the one readers used.
            if series_id == axial_plans[-1][0] or level not in axial_plans[-1][1]:
                point_rows += _subarticular_points(study, level, series_id, at_instance, scene.canal_centre, ax_spacing)
    return series_rows, point_rows, truth_rows, files


def _train_csv_row(study: _Study) -> list[str]:
    """One train.csv row: canal grades as generated (one left empty for a missing-label study), others Normal/Mild."""
    canal = [SEVERITIES[grade] for grade in study.grades]
    if study.scenario == "missing_label":
        canal[study.special_level] = ""
    return [str(study.study_id), *canal, *([SEVERITIES[0]] * (len(CONDITIONS) - 1) * len(LEVELS))]


def write_phantom_dataset(
    out_dir: Path,
    n_studies: int = 60,
    seed: int = 0,
    grade_mix: tuple[float, float, float] = (0.6, 0.25, 0.15),
    image_size: int = 256,
) -> PhantomSummary:
    """Write ``n_studies`` synthetic studies (CSVs and DICOM files) in the RSNA 2024 Kaggle layout."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    # Kaggle ids are large ints; draw distinct ones for studies and series alike.
    ids = [10**6 + int(v) for v in rng.choice(4 * 10**9, size=4 * n_studies, replace=False)]
    studies = [_plan_study(i, ids.pop(), rng, grade_mix) for i in range(n_studies)]
    series_rows, point_rows, truth_rows = [], [], []
    files: dict[str, list[Path]] = {"rle": [], "jpeg2000": [], "monochrome1": [], "plain": []}
    for study in studies:
        s_rows, p_rows, t_rows, s_files = _write_study(study, out_dir / "train_images" / str(study.study_id),
                                                       rng, image_size, ids)
        series_rows += s_rows
        point_rows += p_rows
        truth_rows += t_rows
        for kind, paths in s_files.items():
            files[kind] += paths
    header = ["study_id"] + [f"{condition}_{key}" for condition in CONDITIONS for key in LEVEL_KEYS]
    train_lines = [",".join(header)] + [",".join(_train_csv_row(study)) for study in studies]
    write_text_atomic(out_dir / "train.csv", "\n".join(train_lines) + "\n")
    with atomic_path(out_dir / "train_series_descriptions.csv") as tmp:
        pd.DataFrame(series_rows, columns=["study_id", "series_id", "series_description"]).to_csv(tmp, index=False)
    with atomic_path(out_dir / "train_label_coordinates.csv") as tmp:
        columns = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
        pd.DataFrame(point_rows, columns=columns).to_csv(tmp, index=False)
    return PhantomSummary(
        out_dir=out_dir, n_studies=n_studies, n_images=sum(len(paths) for paths in files.values()),
        truth=pd.DataFrame(truth_rows), files_by_kind=files,
    )
