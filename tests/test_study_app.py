"""/predict_study through the launched app: levels placed by geometry, rows in the Kaggle format, hostile uploads."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from tests.study_fixture import canal_points, simple_study, study_folder, truth, zip_bomb, zip_members, zip_study


def _call(client, path, levels="{}"):
    return client.predict(handle_file(str(path)), levels, "raw", api_name="/predict_study")


def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_predict_study_places_the_levels_on_the_phantoms_slices(app_client, launched_app, phantom_studies, tmp_path):
    hit = placed = expected = 0
    for index in range(phantom_studies.n_studies):
        folder = study_folder(phantom_studies, index)
        points = canal_points(phantom_studies, int(folder.name))
        answer = _call(app_client, _write(tmp_path, f"{index}.zip", zip_study(folder)), json.dumps(points))
        right = truth(phantom_studies, int(folder.name))
        assert answer["study_id"] == folder.name
        for level, entry in answer["levels"].items():
            expected += bool(right[level])
            if entry["axial_instance"] is not None:
                placed += 1
                hit += any(instance == entry["axial_instance"] for _, instance in right[level])
                assert set(entry["models"]) == {m.name for m in launched_app.predictor.models}
                assert entry["row_id"] == f"{folder.name}_spinal_canal_stenosis_{level.lower().replace('/', '_')}"
        assert [row["row_id"] for row in answer["rows"]] == [
            entry["row_id"] for entry in answer["levels"].values() if entry["ensemble"]]
        assert "PHANTOM" not in json.dumps(answer)
    print(f"/predict_study: {hit} of {expected} levels on the phantom's own slice ({placed} placed)")
    assert hit >= 0.95 * expected and hit == placed
    assert list(launched_app.upload_dir.rglob("*.zip")) == []


def test_predict_study_by_axial_instance_and_with_no_levels(app_client, phantom_studies, tmp_path):
    path = _write(tmp_path, "s.zip", zip_study(simple_study(phantom_studies)))
    answer = _call(app_client, path, '{"L3/L4": {"axial_instance": 8}}')
    assert answer["levels"]["L3/L4"]["axial_instance"] == 8 and answer["levels"]["L3/L4"]["distance_mm"] is None
    assert answer["levels"]["L1/L2"]["ensemble"] is None and len(answer["rows"]) == 1
    assert [s["plane"] for s in answer["series"]] == ["sagittal", "axial"]
    assert len(answer["profile"]["instances"]) == 15
    nothing = _call(app_client, _write(tmp_path, "t.zip", zip_study(simple_study(phantom_studies))))
    assert nothing["rows"] == [] and all("not placed" in w for w in nothing["warnings"][-5:])
    with pytest.raises(AppError, match="Unknown disc level"):
        _call(app_client, _write(tmp_path, "u.zip", zip_study(simple_study(phantom_studies))), '{"L6/L7": {}}')


def test_hostile_studies_are_refused_with_a_message_and_the_server_stays_up(app_client, launched_app,
                                                                              phantom_studies, tmp_path):
    one, two = simple_study(phantom_studies), simple_study(phantom_studies, 1)
    dicom = next(one.rglob("*.dcm")).read_bytes()
    both = io.BytesIO()
    with zipfile.ZipFile(both, "w") as archive:
        for folder in (one, two):
            for path in folder.rglob("*.dcm"):
                archive.writestr(str(path.relative_to(folder.parent)), path.read_bytes())
    refused = {
        "bomb.zip": (zip_bomb(), "declares 1050 MB"),
        "many.zip": (zip_members({f"{k}.dcm": b"x" for k in range(10_000)}), "more than 3000 files"),
        "mixed.zip": (both.getvalue(), "mixes 2 studies"),
        "jpegs.zip": (zip_members({f"{k}.jpg": b"\xff\xd8\xff\xe0" + bytes(64) for k in range(4)}),
                      "no DICOM images"),
        "empty.zip": (zip_members({}), "no DICOM files"),
    }
    for name, (data, message) in refused.items():
        with pytest.raises(AppError, match=message):
            _call(app_client, _write(tmp_path, name, data))
    reported = _call(app_client, _write(tmp_path, "odd.zip", zip_members(
        {"../../x/1.dcm": dicom, "inner.zip": zip_study(one), "notes.txt": b"hello"})))
    assert any("nested archive" in w for w in reported["warnings"])
    assert any("no axial series" in w or "not T2" in w or "no sagittal" in w for w in reported["warnings"])
    sagittal_only = zip_members({str(p.relative_to(one.parent)): p.read_bytes() for p in one.rglob("*.dcm")
                          if len(list(p.parent.glob("*.dcm"))) != 15})
    answer = _call(app_client, _write(tmp_path, "sag.zip", sagittal_only), json.dumps(
        canal_points(phantom_studies, int(one.name))))
    assert answer["rows"] == [] and any("no axial series" in w for w in answer["warnings"])
    assert answer["levels"]["L4/L5"]["note"] == "the study has no axial series to grade"
    alive = _call(app_client, _write(tmp_path, "ok.zip", zip_study(one)), '{"L1/L2": {"axial_instance": 2}}')
    assert alive["levels"]["L1/L2"]["ensemble"]["grade"]
    assert [p for p in launched_app.upload_dir.rglob("*") if p.is_file() and p.suffix in (".zip", ".dcm")] == []
