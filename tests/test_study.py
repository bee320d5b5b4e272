"""Whole studies: reading an upload, grouping and ordering series, placing levels by geometry, and hostile uploads."""

from __future__ import annotations

import random
import shutil
import zipfile

import numpy as np
import pytest

from spinecad.study import StudyError, parse_levels, place_levels, read_study
from spinecad.study.archive import MAX_MEMBERS
from tests.study_fixture import canal_points, simple_study, study_folder, truth, zip_bomb, zip_members, zip_study


def _series_id(placement) -> int:
    return int(placement.series.slices[placement.index].member.name.replace("\\", "/").split("/")[-2])


def test_levels_placed_from_the_phantoms_canal_points_land_on_its_disc_slices(phantom_studies):
    placed = hit = expected = 0
    for index in range(phantom_studies.n_studies):
        folder = study_folder(phantom_studies, index)
        study = read_study([folder])
        assert study.study_id == folder.name  # Kaggle layout: the folder names the study
        right = truth(phantom_studies, int(folder.name))
        placements = place_levels(study, parse_levels(canal_points(phantom_studies, int(folder.name))))
        for level, placement in placements.items():
            expected += bool(right[level])
            if placement.placed:
                placed += 1
                hit += (_series_id(placement), placement.axial_instance) in right[level]
                assert placement.distance_mm < 1.0
            elif right[level]:
                assert placement.note  # unplaced levels say why
    print(f"placed {placed} of {expected} levels with an axial disc slice; {hit} on the phantom's own slice")
    assert expected >= 50 and hit >= 0.95 * expected and hit == placed


def test_series_are_described_and_ordered_by_position_not_by_file_name(phantom_studies, tmp_path):
    source = simple_study(phantom_studies)
    files = sorted(source.rglob("*.dcm"))
    random.Random(0).shuffle(files)
    flat = tmp_path / "export"
    flat.mkdir()
    for number, path in enumerate(files):  # PACS-style names: arbitrary, unrelated to InstanceNumber
        shutil.copy(path, flat / f"IM{number:04d}")
    study = read_study([flat])
    assert study.study_id.isdigit() and study.study_id != source.name  # not Kaggle layout: a hash, stable
    assert read_study([flat]).study_id == study.study_id
    assert [(s.plane, s.weighting) for s in study.series] == [("sagittal", "T2/STIR"), ("axial", "T2")]
    positions = [s.position_mm for s in study.axial.slices]
    assert positions == sorted(positions)
    z = [s.plane.origin[2] for s in study.axial.slices]
    assert z == sorted(z, reverse=True)  # axial slices run head to feet
    assert {s.instance_number for s in study.axial.slices} == set(range(1, len(study.axial.slices) + 1))
    assert study.describe()[1] == {"plane": "axial", "weighting": "T2", "slices": 15, "series_number": 2,
                                   "problems": []}


def test_an_axial_instance_chosen_by_hand_and_bad_requests(phantom_studies):
    study = read_study([simple_study(phantom_studies)])
    placements = place_levels(study, parse_levels('{"l4_l5": {"axial_instance": 11}, "L5/S1": {"axial_instance": 99}}'))
    assert placements["L4/L5"].axial_instance == 11 and placements["L4/L5"].distance_mm is None
    assert "InstanceNumber 99" in placements["L5/S1"].note and not placements["L1/L2"].placed
    far = place_levels(study, parse_levels({"L1/L2": {"sagittal_instance": 1, "x": 100.0, "y": 5.0}}))["L1/L2"]
    assert not far.placed and "does not reach" in far.note and far.distance_mm > 10
    for bad, words in [("{", "not valid JSON"), ("[1]", "JSON object"), ('{"L9/L10": {}}', "Unknown disc level"),
                       ('{"L1/L2": {"sagittal_instance": 1, "x": "a", "y": 2}}', 'levels["L1/L2"].x'),
                       ('{"L1/L2": {"axial_instance": 1, "z": 3}}', 'levels["L1/L2"].z')]:
        with pytest.raises(StudyError, match=words.replace("[", r"\[").replace(".", r"\.")):
            parse_levels(bad)
    assert parse_levels("") == {} and parse_levels("{}") == {}


def test_hostile_uploads_are_refused_or_reported(phantom_studies, tmp_path, monkeypatch):
    one, two = simple_study(phantom_studies), simple_study(phantom_studies, 1)
    dicom = next(one.rglob("*.dcm")).read_bytes()
    # A zip bomb: small on disk, gigabytes inflated. Refused from the sizes it declares, before inflating.
    bomb = zip_bomb()
    assert len(bomb) < 5 * 2**20
    with pytest.raises(StudyError, match="declares 1050 MB"):
        read_study([bomb])
    # One over-compressed member among real files is skipped and counted, the rest is read.
    study = read_study([zip_members({"a/1.dcm": dicom, "b.dcm": bytes(50 * 2**20)})])
    assert study.skipped["too large or too compressed"] == 1 and len(study.series) == 1
    with pytest.raises(StudyError, match=f"more than {MAX_MEMBERS} files"):
        read_study([zip_members({f"{k}.dcm": b"x" for k in range(10_000)}, zipfile.ZIP_STORED)])
    # Names are never paths: nothing is written, wherever they point.
    monkeypatch.chdir(tmp_path)
    traversal = read_study([zip_members({"../../evil.dcm": dicom, "/etc/evil2.dcm": dicom, "..\\x.dcm": dicom})])
    assert len(traversal.series[0].slices) == 3 and list(tmp_path.iterdir()) == []
    nested = read_study([zip_members({"inner.zip": zip_study(one), "1.dcm": dicom})])
    assert nested.skipped["nested archive"] == 1
    with pytest.raises(StudyError, match="mixes 2 studies"):
        read_study([one, two])
    with pytest.raises(StudyError, match=r"no DICOM images .*3 not a DICOM image"):
        read_study([zip_members({f"{k}.jpg": b"\xff\xd8\xff\xe0" + bytes(100) for k in range(3)})])
    with pytest.raises(StudyError, match="no DICOM files"):
        read_study([zip_members({})])
    with pytest.raises(StudyError, match="not a readable zip"):
        read_study([b"PK\x03\x04 not really a zip"])


def test_duplicated_positions_and_a_sagittal_only_study_are_reported(phantom_studies, tmp_path):
    from spinecad.inference.study import study_warnings

    folder = simple_study(phantom_studies)
    axial = next(s for s in folder.iterdir() if len(list(s.glob("*.dcm"))) == 15)
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    shutil.copy(axial / "5.dcm", copy / axial.name / "5b.dcm")  # the same file twice: same position and number
    study = read_study([copy])
    assert any("repeat another slice's position" in p for p in study.axial.problems)
    assert any("InstanceNumbers repeat" in p for p in study.axial.problems)
    shutil.rmtree(copy / axial.name)
    sagittal_only = read_study([copy])
    assert sagittal_only.axial is None
    assert any("no axial series" in w for w in study_warnings(sagittal_only))
    placements = place_levels(sagittal_only, parse_levels(canal_points(phantom_studies, int(folder.name))))
    assert all(not p.placed and "no axial series" in p.note for p in placements.values())


def test_a_study_is_graded_in_batches_like_slice_by_slice(phantom_studies, demo_predictor):
    from spinecad.inference.study import grade_study

    folder = simple_study(phantom_studies)
    study = read_study([folder])
    placements = place_levels(study, parse_levels(canal_points(phantom_studies, int(folder.name))))
    steps = []
    grades = grade_study(demo_predictor, study, placements, progress=lambda done, total: steps.append((done, total)))
    assert grades.profile.shape == (15, 5, 3) and steps[-1] == (15, 15)
    demo_predictor.clear_cache()
    for level, prediction in grades.predictions.items():
        single = demo_predictor.predict(placements[level].series.slices[placements[level].index].read())
        assert np.abs(single.ensemble - prediction.ensemble).max() < 0.02
    answer = grades.to_dict()
    assert [row["row_id"] for row in answer["rows"]] == [
        f"{folder.name}_spinal_canal_stenosis_{key}" for key in ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")]
    text = str(answer)
    assert "PHANTOM" not in text and "1.2." not in text  # no patient name, no UID


def test_each_graded_level_is_explained_on_its_own_slice(phantom_studies, demo_predictor):
    from spinecad.inference.heatmaps import explain_slice
    from spinecad.inference.study import explain_study

    folder = simple_study(phantom_studies)
    study = read_study([folder])
    points = canal_points(phantom_studies, int(folder.name))
    placements = place_levels(study, parse_levels({level: points[level] for level in ("L2/L3", "L4/L5")}))
    explained, warnings = explain_study(demo_predictor.models, placements)
    assert warnings == []
    assert [(item.level, item.axial_instance) for item in explained] == [
        (level, placements[level].axial_instance) for level in ("L2/L3", "L4/L5")]  # unplaced levels: none
    for item in explained:
        assert [h.name for h in item.heatmaps] == [m.name for m in demo_predictor.models]
        assert all(h.level == item.level and h.heatmap is not None for h in item.heatmaps)
        # The batched pass gives each level what explaining its slice alone gives (fp32 rounding aside).
        pixels = placements[item.level].series.slices[placements[item.level].index].read().pixels
        alone = explain_slice(demo_predictor.models[:1], pixels, item.level)[0]
        assert alone.grade == item.heatmaps[0].grade
        assert np.abs(alone.heatmap - item.heatmaps[0].heatmap).max() < 0.01


def test_slices_that_are_not_parallel_are_reported(phantom_studies, tmp_path):
    import pydicom

    folder = simple_study(phantom_studies)
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    axial = next(s for s in copy.iterdir() if len(list(s.glob("*.dcm"))) == 15)
    for path in sorted(axial.glob("*.dcm"))[:5]:  # one stack tilted 25 degrees, as RSNA series often hold
        ds = pydicom.dcmread(path)
        tilt = np.radians(25.0)
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, float(np.cos(tilt)), float(np.sin(tilt))]
        ds.save_as(path)
    study = read_study([copy])
    assert any("not parallel" in problem for problem in study.axial.problems), study.axial.problems
    assert len(study.axial.slices) == 15
