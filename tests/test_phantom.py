"""Phantom studies: Kaggle layout, DICOM files that decode (compressed, MONOCHROME1), sac area following the grade."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from train.phantom import render_axial_scene, write_axial_dicom, write_phantom_dataset

REAL_DATA = Path(__file__).resolve().parents[2] / "shared/data/rsna2024"
N_STUDIES = 20


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("phantom")
    started = time.perf_counter()
    summary = write_phantom_dataset(out_dir, n_studies=N_STUDIES, seed=1)
    seconds = time.perf_counter() - started
    print(f"\nwrote {N_STUDIES} phantom studies ({summary.n_images} files) in {seconds:.1f} s")
    # The budget is 60 studies in 20 s on one core; allow slack for a shared machine.
    assert seconds < 2 * 20 * N_STUDIES / 60
    return summary


def test_csvs_have_the_kaggle_layout(phantom):
    train = pd.read_csv(phantom.out_dir / "train.csv")
    series = pd.read_csv(phantom.out_dir / "train_series_descriptions.csv")
    points = pd.read_csv(phantom.out_dir / "train_label_coordinates.csv")
    assert len(train) == N_STUDIES and train.shape[1] == 26 and train["study_id"].min() > 10**6
    if REAL_DATA.is_dir():
        assert list(train.columns) == list(pd.read_csv(REAL_DATA / "train.csv", nrows=1).columns)
    assert list(series.columns) == ["study_id", "series_id", "series_description"]
    assert set(series["series_description"]) == {"Axial T2", "Sagittal T2/STIR"}
    assert series.groupby("study_id")["series_description"].apply(lambda kinds: (kinds == "Axial T2").sum()).max() == 2
    assert list(points.columns) == ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
    assert set(points["condition"]) == {
        "Spinal Canal Stenosis", "Left Subarticular Stenosis", "Right Subarticular Stenosis",
    }
    on_disk = {(int(p.parts[-3]), int(p.parts[-2]), int(p.stem))
               for p in (phantom.out_dir / "train_images").glob("*/*/*.dcm")}
    assert len(on_disk) == phantom.n_images
    assert set(zip(points["study_id"], points["series_id"], points["instance_number"], strict=True)) <= on_disk
    graded = train.filter(like="spinal_canal_stenosis").stack().dropna()
    assert set(graded) == {"Normal/Mild", "Moderate", "Severe"}


def test_every_kind_of_file_decodes(phantom):
    expected_syntax = {"rle": RLELossless, "jpeg2000": JPEG2000Lossless, "plain": ExplicitVRLittleEndian}
    for kind, paths in phantom.files_by_kind.items():
        assert paths, f"no {kind} files written"
        for path in paths[:: max(1, len(paths) // 4)]:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
            assert pixels.dtype == np.uint16 and pixels.max() <= 4095 and pixels.shape == (256, 256)
            assert ds.BitsStored == 12 and ds.Modality == "MR" and ds.PatientName.family_name == "PHANTOM"
            assert "RescaleSlope" in ds and "RescaleIntercept" in ds and "WindowCenter" in ds
            assert ds.SOPInstanceUID.is_valid and ds.SeriesInstanceUID.is_valid
            assert len(ds.ImageOrientationPatient) == 6 and len(ds.ImagePositionPatient) == 3
            assert ds.PhotometricInterpretation == ("MONOCHROME1" if kind == "monochrome1" else "MONOCHROME2")
            if kind != "monochrome1":
                assert ds.file_meta.TransferSyntaxUID == expected_syntax[kind]
            if ds.SeriesDescription == "Axial T2":
                # Air fills the corners: dark as displayed, so bright as stored in a MONOCHROME1 file.
                corner = float(pixels[:8, :8].mean())
                assert corner > 3500 if kind == "monochrome1" else corner < 400


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, ExplicitVRLittleEndian])
def test_compressed_axial_dicom_round_trips_losslessly(tmp_path, syntax):
    pixels = render_axial_scene(2, np.random.default_rng(0), size=96).pixels
    path = write_axial_dicom(tmp_path / "slice.dcm", pixels, instance_number=7, transfer_syntax=syntax)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == syntax and ds.InstanceNumber == 7
    assert np.array_equal(ds.pixel_array, pixels)


def test_monochrome1_stores_inverted_values(tmp_path):
    pixels = render_axial_scene(0, np.random.default_rng(1), size=64).pixels
    ds = pydicom.dcmread(write_axial_dicom(tmp_path / "inv.dcm", pixels, photometric="MONOCHROME1"))
    assert np.array_equal(4095 - ds.pixel_array, pixels)


def test_sac_area_shrinks_with_grade():
    areas = {
        severity: [render_axial_scene(severity, np.random.default_rng(seed), size=128).canal_mask.sum()
                   for seed in range(12)]
        for severity in range(3)
    }
    means = [float(np.mean(areas[severity])) for severity in range(3)]
    print("\nmean sac area (pixels at 128x128) per grade:", [round(mean) for mean in means])
    assert means[0] > 1.6 * means[1] > 1.6 * 1.6 * means[2] > 0
    assert max(areas[1]) < min(areas[0]) and max(areas[2]) < min(areas[1])


def test_canal_mask_is_bright_csf_around_the_centre():
    scene = render_axial_scene(0, np.random.default_rng(2), size=128)
    row, col = (round(v) for v in scene.canal_centre)
    assert scene.canal_mask[row, col]
    assert scene.pixels[scene.canal_mask].mean() > 2 * scene.pixels[~scene.canal_mask].mean()


def test_truth_points_at_the_sac_of_the_written_slice(phantom):
    truth = phantom.truth[phantom.truth["severity"] == "Normal/Mild"].iloc[0]
    ds = pydicom.dcmread(
        phantom.out_dir / "train_images" / str(truth.study_id) / str(truth.series_id) / f"{truth.instance_number}.dcm"
    )
    pixels = ds.pixel_array if ds.PhotometricInterpretation == "MONOCHROME2" else 4095 - ds.pixel_array
    row, col = round(truth.canal_row), round(truth.canal_col)
    assert pixels[row - 1:row + 2, col - 1:col + 2].mean() > 1.3 * pixels.mean()
