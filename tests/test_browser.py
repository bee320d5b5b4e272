"""The app in a real browser: Debian's Chromium driven by Playwright (never ``playwright install``), on the session's
in-process app (``launched_app`` in conftest.py).

Screenshots of both tabs and of the heatmap gallery are left in ``test-artifacts/``; with SPINECAD_UPDATE_SCREENSHOTS=1
they are also copied to ``docs/screenshots/`` for the README, taken on an app of its own on the committed demo set (or
SPINECAD_MANIFEST's) when it is there.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spinecad.evaluation.store import load_predictions
from spinecad.labels import SEVERITY_COLUMNS
from tests.app_fixture import REPO
from tests.conftest import DEMO_MANIFEST, EXAMPLES_DIR, serving

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
UPDATE_SCREENSHOTS = os.environ.get("SPINECAD_UPDATE_SCREENSHOTS") == "1"
README_SCREENSHOTS = REPO / "docs" / "screenshots"
MODEL_NAMES = ["ViT-B/16", "Swin-B", "BEiT-B", "EfficientNetV2-M", "ResNet-152", "ConvNeXt-B"]
TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class BrowserApp:
    url: str
    upload_dir: Path
    evaluation_dir: Path


@pytest.fixture(scope="module")
def app(request, upload_dir) -> BrowserApp:
    """The session's app on the fixture set, or one on the demo set when refreshing the README's screenshots."""
    screenshot_manifest = Path(os.environ.get("SPINECAD_MANIFEST") or DEMO_MANIFEST)
    if not (UPDATE_SCREENSHOTS and screenshot_manifest.is_file()):
        launched = request.getfixturevalue("launched_app")
        yield BrowserApp(launched.url, launched.upload_dir, launched.predictor.manifest.evaluation_dir)
        return
    if screenshot_manifest == DEMO_MANIFEST:
        predictor = request.getfixturevalue("demo_predictor")
    else:
        from spinecad.inference.predictor import Predictor

        predictor = Predictor.from_manifest(screenshot_manifest, device="cpu")
    with serving(predictor, upload_dir) as url:  # the demo set makes the README's pictures
        yield BrowserApp(url, upload_dir, predictor.manifest.evaluation_dir)


@pytest.fixture(scope="module")
def page(app):
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(app.url)
        yield page
        browser.close()


def uploads_left(upload_dir: Path) -> list[Path]:
    return [p for p in upload_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]


def save_screenshot(page, name: str, artifacts_dir: Path, element: str | None = None) -> None:
    path = artifacts_dir / name
    if element:
        page.locator(element).screenshot(path=path)
    else:
        page.screenshot(path=path, full_page=True)
    if UPDATE_SCREENSHOTS:
        README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        # 256 colours are plenty for a page of flat colours and greys, at a third of the size in git.
        Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
            README_SCREENSHOTS / name, optimize=True)


def test_predict_tab_grades_an_uploaded_slice(page, app, artifacts_dir, tmp_path):
    upload = tmp_path / "slice.dcm"
    shutil.copyfile(EXAMPLES_DIR / "severe_axial.dcm", upload)
    page.set_input_files("#slice-upload input[type=file]", upload)
    rows = page.locator("#model-table .virtual-row")
    rows.nth(6).wait_for()
    texts = rows.all_inner_texts()
    assert len(texts) == 7  # six models and the ensemble
    assert [text.split("\n")[0] for text in texts] == [*MODEL_NAMES, "Ensemble (mean)"]
    page.locator("#probability-plot .js-plotly-plot svg").first.wait_for()
    page.locator("#grade-grid .js-plotly-plot svg").first.wait_for()
    assert page.locator("#slice-preview img").get_attribute("src").startswith("data:image/png;base64,")
    assert "L4/L5:" in page.locator("#headline").inner_text()

    page.locator("#level-picker").get_by_text("L2/L3").click()
    page.wait_for_function("() => document.querySelector('#headline').innerText.includes('L2/L3:')")

    page.locator("#level-picker").get_by_text("L4/L5").click()
    page.wait_for_function("() => document.querySelector('#headline').innerText.includes('L4/L5:')")

    # Explain: one heatmap per model, side by side, computed only on request.
    assert page.locator("#heatmap-gallery img").count() == 0
    page.locator("#explain-button").click()
    page.locator("#heatmap-gallery img").nth(5).wait_for()
    images = page.locator("#heatmap-gallery img")
    assert images.count() == 6
    assert all(src.startswith("data:image/png;base64,") for src in images.evaluate_all("els => els.map(e => e.src)"))
    assert all(images.nth(k).evaluate("e => e.complete && e.naturalWidth > 0") for k in range(6))
    captions = page.locator("#heatmap-gallery figcaption").all_inner_texts()
    assert [caption.split("\n")[0] for caption in captions] == MODEL_NAMES
    # The overlays hold the slice: the gallery gets them inline, and neither they nor the upload stay on the server.
    assert uploads_left(app.upload_dir) == []
    save_screenshot(page, "explain.png", artifacts_dir, element="#heatmap-gallery")
    save_screenshot(page, "predict.png", artifacts_dir)

    # The calibrated switch changes the percentages, not the grades; a new level clears the stale heatmaps.
    raw_rows = page.locator("#model-table .virtual-row").all_inner_texts()
    page.get_by_test_id("Calibrated-radio-label").click()
    page.wait_for_function("() => document.querySelector('#headline').innerText.includes('Calibrated probabilities')")
    page.wait_for_function("(before) => JSON.stringify([...document.querySelectorAll('#model-table .virtual-row')]"
                           ".map(r => r.innerText)) !== before", arg=json.dumps(raw_rows))
    calibrated_rows = page.locator("#model-table .virtual-row").all_inner_texts()
    assert [r.split("\n")[4] for r in calibrated_rows] == [r.split("\n")[4] for r in raw_rows]  # grades
    page.get_by_test_id("Raw-radio-label").click()
    page.wait_for_function("() => !document.querySelector('#headline').innerText.includes('Calibrated')")
    page.locator("#level-picker").get_by_text("L3/L4").click()
    page.wait_for_function("() => document.querySelectorAll('#heatmap-gallery img').length === 0")
    page.locator("#level-picker").get_by_text("L4/L5").click()
    page.wait_for_function("() => document.querySelector('#headline').innerText.includes('L4/L5:')")


def test_an_example_with_a_warning_shows_it_beside_the_result(page):
    page.get_by_text("Sagittal slice (shows a warning) [n/a]").click()
    page.wait_for_function("() => document.querySelector('#slice-warnings').innerText.includes('sagittal')")
    page.get_by_text("Severe · DICOM [Severe]").click()
    page.wait_for_function("() => document.querySelector('#slice-warnings').innerText.trim() === ''")


def test_an_unfamiliar_upload_is_called_so_above_the_grades_and_a_phantom_example_is_not(page, tmp_path):
    noise = tmp_path / "holiday-photo.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(noise)
    page.set_input_files("#slice-upload input[type=file]", noise)
    page.wait_for_function("() => document.querySelector('#headline').innerText.includes('have not seen images')")
    headline = page.locator("#headline").inner_text()
    assert headline.index("have not seen images like this") < headline.index("L4/L5:")  # the warning comes first
    assert "not meaningful" in page.locator("#slice-warnings").inner_text()
    page.get_by_text("Normal/Mild · PNG [Normal/Mild]").click()
    page.wait_for_function("() => !document.querySelector('#headline').innerText.includes('have not seen images')"
                           " && document.querySelector('#headline').innerText.includes('L4/L5:')")
    assert "not meaningful" not in page.locator("#slice-warnings").inner_text()


def test_an_unreadable_upload_is_explained_in_the_result_area(page, tmp_path):
    report = tmp_path / "report.dcm"
    report.write_text("a radiology report, not an image")
    page.set_input_files("#slice-upload input[type=file]", report)
    page.wait_for_function("() => document.querySelector('#headline').innerText.includes('Cannot grade this file')")
    assert "The file is not a DICOM, PNG or JPEG image." in page.locator("#headline").inner_text()
    assert not page.locator("#model-table").is_visible()


def test_compare_tab_draws_its_plotly_charts(page, artifacts_dir):
    page.get_by_role("tab", name="Compare").click()
    for chart in ("#roc-plot", "#pr-plot", "#confusion-plot", "#reliability-plot", "#significance-plot",
                  "#history-plot"):
        page.locator(f"{chart} .js-plotly-plot .main-svg").first.wait_for()
        assert page.locator(f"{chart} .js-plotly-plot path.js-line, {chart} .js-plotly-plot .hm").count() > 0
    table = page.locator("#metrics-table").inner_text()
    assert "Macro F1" in table and "ECE, raw" in table and "ECE, calibrated" in table
    # Reliability: one panel per model with ECE before -> after; significance: two matrices with intervals.
    titles = page.locator("#reliability-plot text.annotation-text").evaluate_all("els => els.map(e => e.textContent)")
    assert sum("→" in title for title in titles) == len(MODEL_NAMES) + 1
    assert page.locator("#significance-plot .hm").count() == 2
    cells = page.locator("#significance-plot text").evaluate_all("els => els.map(e => e.textContent)")
    assert sum("[" in cell for cell in cells) == 2 * len(MODEL_NAMES) * (len(MODEL_NAMES) + 1) // 2
    assert "paired resamples" in page.locator("#significance-note").inner_text()
    aids = {text.strip() for text in page.locator(".reading-aid").all_inner_texts()}
    assert len(aids) == 6 and all(text.startswith("How to read it.") for text in aids)
    page.locator("#split-picker").get_by_text("Validation").click()
    page.wait_for_timeout(500)
    page.locator("#split-picker").get_by_text("Test").click()
    page.wait_for_timeout(1000)  # let Plotly finish its transition before the picture
    save_screenshot(page, "compare.png", artifacts_dir)


def test_an_uploaded_predictions_file_becomes_one_more_column(page, app, tmp_path):
    stored = load_predictions(app.evaluation_dir, "ensemble", "test")
    submission = stored[["row_id", *SEVERITY_COLUMNS]].copy()
    submission[list(SEVERITY_COLUMNS)] = 0.5 * submission[list(SEVERITY_COLUMNS)] + 0.5 / 3  # a blurrier model
    path = tmp_path / "my_model_predictions.csv"
    submission.to_csv(path, index=False)
    page.set_input_files("#predictions-upload input[type=file]", path)
    page.wait_for_function(
        "() => document.querySelector('#metrics-table').innerText.includes('Your model (uploaded)')")
    assert f"Scored on {len(stored)} of {len(stored)} labelled rows" in page.locator("#outside-note").inner_text()
    # Only the browser can upload a predictions file: its name is not shown, and it does not stay on the server.
    assert "my_model_predictions" not in page.content()
    assert uploads_left(app.upload_dir) == []
