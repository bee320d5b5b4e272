"""The Study tab in Chromium (Playwright): upload a phantom study zip, click the five discs on the sagittal slice,
grade, and read the table and the profile. The screenshot is left in test-artifacts/ (and refreshed for the README
with SPINECAD_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import pytest

from tests.study_fixture import canal_points, simple_study, truth, zip_study
from tests.test_browser import app, page, save_screenshot, uploads_left  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


def test_a_study_is_graded_from_five_clicks(page, app, phantom_studies, artifacts_dir, tmp_path):  # noqa: F811
    folder = simple_study(phantom_studies)
    upload = tmp_path / "study.zip"
    upload.write_bytes(zip_study(folder))
    page.get_by_role("tab", name="Study").click()
    page.set_input_files("#study-upload input[type=file]", upload)
    image = page.locator("#sagittal-view img.spinecad-clickable")
    image.wait_for()
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    assert "sagittal" in page.locator("#study-series").inner_text().lower()
    width, height = int(image.get_attribute("data-width")), int(image.get_attribute("data-height"))
    right = truth(phantom_studies, int(folder.name))
    for level, point in canal_points(phantom_studies, int(folder.name)).items():
        assert page.locator("#study-level input:checked").get_attribute("value") == level
        image.scroll_into_view_if_needed()
        box = image.bounding_box()
        page.mouse.click(box["x"] + (point["x"] + 0.5) / width * box["width"],
                         box["y"] + (point["y"] + 0.5) / height * box["height"])
        instance = next(iter(right[level]))[1]
        page.locator("#study-placements").get_by_text(f"{level}: axial slice #{instance} (").wait_for()
    assert page.locator("#sagittal-view svg circle").count() == 5
    page.locator("#grade-study").click()
    page.locator("#study-profile .js-plotly-plot svg").first.wait_for()
    rows = page.locator("#study-table .virtual-row")
    rows.nth(3).wait_for()
    first_row = [cell.strip() for cell in rows.nth(0).inner_text().split("\n") if cell.strip()]
    assert first_row[1:] == [str(next(iter(right[lv]))[1]) for lv in right]  # the phantom's own disc slices
    assert "Ensemble" in " ".join(rows.all_inner_texts())
    assert "The study, level by level" in page.locator("#study-headline").inner_text()
    save_screenshot(page, "study.png", artifacts_dir)
    # Explain: each model's heatmap at every graded level, on the slice that level was graded on.
    page.locator("#study-explain").click()
    sections = page.locator("#study-heatmaps section.spinecad-level-heatmaps")
    sections.nth(4).wait_for(timeout=180_000)
    headings = [text.strip() for text in page.locator("#study-heatmaps h4").all_inner_texts()]
    assert headings == [f"{lv} · axial slice #{next(iter(right[lv]))[1]}" for lv in right]
    assert page.locator("#study-heatmaps figure.spinecad-heatmap").count() == 5 * 6
    assert page.locator("#study-heatmaps img").first.get_attribute("src").startswith("data:image/png;base64,")
    page.locator("#study-heatmaps").screenshot(path=str(artifacts_dir / "study_heatmaps.png"))
    assert uploads_left(app.upload_dir) == []
