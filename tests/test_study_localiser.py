"""The study mode with the demo localiser: ``levels = {}`` places the levels by itself, and falls back to clicking."""

from __future__ import annotations

import json
import shutil

import pytest
from gradio_client import Client, handle_file

from spinecad.inference.localizing import load_localizer
from spinecad.inference.manifest import read_manifest
from spinecad.inference.study import localise, place_with_localiser
from spinecad.study import read_study
from tests.conftest import DEMO_MANIFEST, serving
from tests.study_fixture import canal_points, simple_study, study_folder, zip_study


@pytest.fixture(scope="module")
def demo_app(demo_predictor, upload_dir):
    with serving(demo_predictor, upload_dir) as url:
        client = Client(url, verbose=False)
        yield client
        client.close()


def test_levels_placed_by_the_localiser_grade_like_the_true_points(demo_app, phantom_studies, tmp_path):
    same = total = 0
    for index in range(phantom_studies.n_studies):
        folder = study_folder(phantom_studies, index)
        path = tmp_path / f"{index}.zip"
        path.write_bytes(zip_study(folder))
        auto = demo_app.predict(handle_file(str(path)), "{}", api_name="/predict_study")
        path.write_bytes(zip_study(folder))
        given = demo_app.predict(handle_file(str(path)), json.dumps(canal_points(phantom_studies, int(folder.name))),
                                 api_name="/predict_study")
        for level, truth in given["levels"].items():
            if truth["ensemble"] is None:
                continue
            total += 1
            mine = auto["levels"][level]
            if mine["ensemble"] is not None:
                assert mine["placed_by"] == "localiser" and 0 <= mine["confidence"] <= 1
                same += mine["ensemble"]["grade"] == truth["ensemble"]["grade"]
            else:
                assert "localiser" in mine["note"]  # a level it declines says so, and is not guessed
    print(f"localiser vs true points: the same grade at {same} of {total} levels")
    assert total >= 50 and same >= 0.9 * total


def test_without_a_sagittal_series_or_with_one_slice_the_levels_are_left_to_the_user(phantom_studies, tmp_path):
    localizer, problem = load_localizer(read_manifest(DEMO_MANIFEST))
    assert localizer is not None and problem == ""
    folder = simple_study(phantom_studies)
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    sagittal = next(p for p in copy.iterdir() if len(list(p.glob("*.dcm"))) != 15)
    for extra in sorted(sagittal.glob("*.dcm"))[1:]:
        extra.unlink()
    one_slice = localise(localizer, read_study([copy]))
    assert "single slice" in one_slice.problem and not one_slice.requests
    placements = place_with_localiser(read_study([copy]), {}, one_slice)
    assert all("single slice" in p.note for p in placements.values())
    shutil.rmtree(sagittal)
    none = localise(localizer, read_study([copy]))
    assert "no sagittal series" in none.problem


def test_a_localiser_that_fails_to_load_is_named_and_the_study_mode_asks_for_clicks(tmp_path):
    manifest = json.loads(DEMO_MANIFEST.read_text())
    shutil.copytree(DEMO_MANIFEST.parent / manifest["localizer"]["path"], tmp_path / "broken")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not a safetensors file")
    manifest["localizer"]["path"] = "broken"
    manifest["models"] = [{**entry, "path": str(DEMO_MANIFEST.parent / entry["path"])} for entry in manifest["models"]]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    localizer, problem = load_localizer(read_manifest(tmp_path / "manifest.json"))
    assert localizer is None and "could not be loaded" in problem and "click" in problem
