"""The app driven through gradio_client: the session's one in-process app (``launched_app`` in conftest.py), built
by ``ui.build`` on the fixture set and served by ``ui.launch`` as app.py does.

The fixture's manifest lists the six models plus a seventh whose folder is missing, so the same app shows a load
failure in the banner while the six others serve. What only a separate process shows (its log, its temporary folder,
starting on broken checkpoints) is in test_privacy and test_checkpoint_faults.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from spinecad.inference.predictor import ENSEMBLE
from spinecad.labels import LEVELS, SEVERITIES
from spinecad.models.calibration import temperature_scaled
from tests.app_fixture import FIXTURE_TEMPERATURES, MISSING_MODEL
from tests.conftest import EXAMPLES_DIR, REPO

pytestmark = pytest.mark.slow

MODEL_NAMES = ["ViT-B/16", "Swin-B", "BEiT-B", "EfficientNetV2-M", "ResNet-152", "ConvNeXt-B"]


@pytest.fixture()
def client(app_client):
    return app_client


@pytest.fixture()
def upload_copy(tmp_path):
    """Copy an example under the name it would have as a visitor's file (the name must not matter)."""

    def copy(example: str, suffix: str | None = None) -> Path:
        source = EXAMPLES_DIR / example
        target = tmp_path / ("upload" + (source.suffix if suffix is None else suffix))
        shutil.copyfile(source, target)
        return target

    return copy


def uploads_left(upload_dir: Path) -> list[Path]:
    return [p for p in upload_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]


def _check_shape(result: dict, level: str) -> None:
    assert result["level"] == level
    assert list(result["models"]) == MODEL_NAMES
    for values in [*result["models"].values(), result["ensemble"]]:
        probs = [values[grade] for grade in SEVERITIES]
        assert all(0.0 <= p <= 1.0 for p in probs) and abs(sum(probs) - 1.0) < 1e-4
        assert values["grade"] == SEVERITIES[int(np.argmax(probs))]
    for values in result["models"].values():
        assert values["latency_ms"] >= 0.0 and isinstance(values["from_cache"], bool)
        assert isinstance(values["familiar"], bool) and values["familiar"] == (values["familiarity"] <= 1.0)
    assert result["unfamiliar"] == (sum(not v["familiar"] for v in result["models"].values()) > 3)
    assert isinstance(result["models_split"], bool)
    assert 0.0 <= result["ensemble"]["agreement"] <= 1.0
    assert set(result["all_levels"]) == {*MODEL_NAMES, ENSEMBLE}
    assert all(list(grades) == list(LEVELS) for grades in result["all_levels"].values())
    assert all(result["all_levels"][name][level] == result["models"][name]["grade"] for name in MODEL_NAMES)
    assert isinstance(result["warnings"], list)
    assert result["device"] == "cpu"


@pytest.mark.parametrize(("example", "suffix", "source"), [
    ("severe_axial.dcm", ".dcm", "DICOM 192x192, DICOM window"),
    ("moderate_monochrome1", "", "DICOM 192x192, DICOM window, MONOCHROME1 (inverted)"),
    ("normal_axial.png", ".png", "PNG 192x192, as stored (8-bit)"),
])
def test_predict_returns_the_documented_json_for_every_level(client, upload_copy, example, suffix, source):
    path = upload_copy(example, suffix)
    for level in LEVELS:
        shutil.copyfile(EXAMPLES_DIR / example, path)
        result = client.predict(handle_file(path), level, api_name="/predict")
        _check_shape(result, level)
        assert result["source"] == source
        assert result["warnings"] == []
        assert result["demo"] is True


def test_a_level_switch_reuses_the_cached_backbone_features(client, tmp_path):
    pixels = np.random.default_rng(7).integers(0, 256, size=(160, 160), dtype=np.uint8)  # an image never seen
    path = tmp_path / "fresh.png"
    Image.fromarray(pixels).save(path)
    first = client.predict(handle_file(path), "L4/L5", api_name="/predict")
    second = client.predict(handle_file(path), "L2/L3", api_name="/predict")
    assert not any(values["from_cache"] for values in first["models"].values())
    assert all(values["from_cache"] for values in second["models"].values())
    # One backbone pass served every level: the first call already knew the second call's grades.
    assert first["all_levels"] == second["all_levels"]


def test_a_sagittal_slice_comes_with_a_warning(client, upload_copy):
    result = client.predict(handle_file(upload_copy("sagittal.dcm")), "L4/L5", api_name="/predict")
    assert "sagittal, not axial" in result["warnings"][0]


def test_an_image_unlike_the_training_images_is_called_unfamiliar_by_the_ensemble(client, tmp_path):
    path = tmp_path / "holiday.png"
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(path)
    result = client.predict(handle_file(path), "L4/L5", api_name="/predict")
    _check_shape(result, "L4/L5")
    assert result["unfamiliar"] is True
    assert any("have not seen images like this" in warning for warning in result["warnings"])


@pytest.mark.parametrize(("content", "name", "message"), [
    (b"This is a radiology report, not an image.\n", "report.dcm", "The file is not a DICOM, PNG or JPEG image."),
    (b"", "empty.dcm", "The file is empty."),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "truncated.png", "The file is not a readable DICOM, PNG or JPEG image."),
])
def test_a_bad_upload_gets_a_clear_message_not_a_stack_trace(client, tmp_path, content, name, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AppError) as raised:
        client.predict(handle_file(path), "L4/L5", api_name="/predict")
    assert str(raised.value) == message


def test_an_unknown_level_is_refused_by_name(client, upload_copy):
    with pytest.raises(AppError, match=r"Unknown disc level 'L6/L7'; expected one of L1/L2, L2/L3"):
        client.predict(handle_file(upload_copy("normal_axial.png")), "L6/L7", api_name="/predict")


def test_the_banner_names_the_models_their_source_the_failure_and_the_demo_warning(launched_app, client):
    """The one test of the banner as the launched page serves it (test_charts tests ``banner_markdown`` itself)."""
    banner = next(c["props"]["value"] for c in client.config["components"] if c["props"].get("elem_id") == "banner")
    assert "Demo weights, not for clinical use" in banner and "synthetic phantom images" in banner
    assert "**6 of 7 models loaded** on **CPU** from *Test fixture (random weights)*" in banner
    assert f"{', '.join(MODEL_NAMES)} from local folder `spinecad-fixture/`" in banner
    assert f"**{MISSING_MODEL} could not be loaded**: {MISSING_MODEL}: no checkpoint folder at" in banner
    assert "The other models still serve" in banner
    # Folders are named relative to the manifest's parent: the server's own paths stay off the page.
    assert "spinecad-fixture/missing" in banner and str(launched_app.predictor.manifest.root) not in banner


def test_the_server_limits_uploads_and_offers_only_the_three_scripted_endpoints(client):
    assert client.config["max_file_size"] == 256 * 2**20  # a study's zip; one slice is held to 64 MB when read
    scripted = [d["api_name"] for d in client.config["dependencies"] if d.get("api_visibility") != "private"]
    assert scripted == ["predict", "explain", "predict_study"]  # the UI's own events stay private


def test_calibrated_probabilities_are_each_models_temperature_applied(client, upload_copy):
    path = upload_copy("moderate_axial.png")
    raw = client.predict(handle_file(path), "L3/L4", api_name="/predict")  # the default stays raw
    shutil.copyfile(EXAMPLES_DIR / "moderate_axial.png", path)
    calibrated = client.predict(handle_file(path), "L3/L4", "calibrated", api_name="/predict")
    assert raw["calibrated"] is False and calibrated["calibrated"] is True
    assert all(values["from_cache"] for values in calibrated["models"].values())  # only the heads ran
    for name, temperature in zip(MODEL_NAMES, FIXTURE_TEMPERATURES, strict=True):
        before = np.array([[raw["models"][name][grade] for grade in SEVERITIES]])
        after = [calibrated["models"][name][grade] for grade in SEVERITIES]
        np.testing.assert_allclose(after, temperature_scaled(before, temperature)[0], atol=1e-4)
        assert calibrated["models"][name]["grade"] == raw["models"][name]["grade"]
    mean = np.mean([[calibrated["models"][n][g] for g in SEVERITIES] for n in MODEL_NAMES], axis=0)
    np.testing.assert_allclose([calibrated["ensemble"][g] for g in SEVERITIES], mean, atol=1e-4)
    shutil.copyfile(EXAMPLES_DIR / "moderate_axial.png", path)
    with pytest.raises(AppError, match="Unknown probabilities 'cooked'; expected 'raw' or 'calibrated'"):
        client.predict(handle_file(path), "L3/L4", "cooked", api_name="/predict")


def test_explain_returns_one_heatmap_image_per_model(launched_app, client, upload_copy):
    result = client.predict(handle_file(upload_copy("severe_axial.dcm")), "L5/S1", api_name="/explain")
    assert result["level"] == "L5/S1" and list(result["models"]) == MODEL_NAMES
    for values in result["models"].values():
        header, encoded = values["image"].split(",", 1)
        assert header == "data:image/png;base64"
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert image.size == (192, 192) and image.mode == "RGB"
        assert values["grade"] in SEVERITIES and 0 < values["probability"] <= 1 and values["seconds"] > 0
        assert values["method"].split(" · ")[0] in ("Grad-CAM", "HiResCAM")
    # The overlays hold the slice: they travel inline and never land in the server's file cache.
    assert uploads_left(launched_app.upload_dir) == []  # /explain deletes its upload too
    empty = upload_copy("severe_axial.dcm")
    empty.write_bytes(b"")
    with pytest.raises(AppError) as raised:
        client.predict(handle_file(empty), "L5/S1", api_name="/explain")
    assert str(raised.value) == "The file is empty."


def test_a_refused_file_empties_every_view_the_previous_result_filled(demo_predictor, tmp_path):
    import gradio as gr

    from spinecad.ui.predict_tab import PredictTab

    with gr.Blocks():
        tab = PredictTab(demo_predictor, demo=True, examples=[], examples_dir=None, upload_root=tmp_path)
        tab.render()
    shown = tab.on_example("missing example", "L4/L5", "raw")  # refused too: the example is not there
    good = tab._shown(tab.analyse((EXAMPLES_DIR / "severe_axial.dcm").read_bytes()), "L4/L5")
    assert good[tab.result_json]["level"] == "L4/L5" and good[tab.table] is not None
    refused = tab.on_upload(None, "L4/L5", "raw")
    assert set(good) <= set(refused) and set(good) <= set(shown)  # nothing keeps the earlier slice's result
    assert all(refused[c] is None for c in (tab.result_json, tab.table, tab.probability_plot, tab.grid_plot))
    assert "No file was uploaded." in refused[tab.headline]


PAPER = REPO.parent / "shared" / "PAPER.md"


def paper_table_2() -> dict[tuple[str, str], dict[str, str]]:
    """The paper's appendix Table 2 as it is printed: (group, metric) -> paper column -> value text."""
    lines = PAPER.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Metric\tBEiT"))
    columns = lines[start].split("\t")[1:]
    groups = {"Overall Performance": "Overall", "Normal/Mild Class": "Normal/Mild", "Moderate Class": "Moderate",
              "Severe Class": "Severe"}
    table, group = {}, None
    for line in lines[start + 1:]:
        if line.startswith("Table 2"):
            break
        cells = [re.sub(r"</?b>", "", cell).strip() for cell in line.split("\t")]
        if cells[0] in groups:
            group = groups[cells[0]]
        elif len(cells) == len(columns) + 1:
            table[(group, cells[0])] = dict(zip(columns, cells[1:], strict=True))
    return table


def test_the_compare_tab_shows_every_value_of_the_papers_table_2_exactly(client):
    if not PAPER.is_file():
        pytest.skip(f"{PAPER} is not beside this checkout")
    expected = paper_table_2()
    assert len(expected) == 20
    component = next(c for c in client.config["components"] if c["props"].get("elem_id") == "paper-table")
    value = component["props"]["value"]
    headers, rows = value["headers"], value["data"]
    names = {"BEiT": "BEiT-B", "ViT": "ViT-B/16", "ResNet": "ResNet-152", "ConvNeXt": "ConvNeXt-B",
             "EfficientNet": "EfficientNetV2-M", "Swin": "Swin-B"}
    group = None
    shown = {}
    for row in rows:
        group = row[0] or group
        shown[(group, row[1])] = {column: str(cell).strip("*") for column, cell in zip(headers[2:], row[2:],
                                                                                        strict=True)}
    assert set(shown) == set(expected)
    for key, values in expected.items():
        assert {paper: shown[key][f"{names[paper]} (paper)"] for paper in values} == values, key
