"""The app's building blocks without a server: charts, Compare-tab data, slice analysis, uploads, wording, examples."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from PIL import Image

from spinecad.evaluation import comparison
from spinecad.evaluation import store as evaluation
from spinecad.evaluation.scoring import ScoringError
from spinecad.examples import read_example_index
from spinecad.imaging import ImageReadError, SliceFacts, read_slice
from spinecad.inference.heatmaps import Heatmap, overlay_heatmap
from spinecad.inference.loading import LoadedModel, LoadFailure
from spinecad.inference.predictor import ENSEMBLE, ModelOutput, Prediction
from spinecad.labels import LEVELS, SEVERITIES, SEVERITY_COLUMNS
from spinecad.ui import charts
from spinecad.ui import text as ui_text
from spinecad.ui.analysis import SliceAnalysis, describe_source
from spinecad.ui.html import heatmap_gallery_html, preview_html, preview_png
from spinecad.ui.tables import RSNA_GROUP, metrics_table, probability_table, two_line_cells
from spinecad.ui.uploads import consume_upload, remove_upload
from tests.app_fixture import write_fixture_evaluation
from tests.conftest import EXAMPLES_DIR

MODELS = [("vit_b16", "ViT-B/16"), ("swin_b", "Swin-B"), ("resnet152", "ResNet-152")]


@pytest.fixture()
def prediction() -> Prediction:
    rng = np.random.default_rng(1)
    outputs = []
    for key, name in MODELS:
        logits = rng.normal(size=(len(LEVELS), len(SEVERITIES)))
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        outputs.append(ModelOutput(key, name, probs, latency_ms=12.5, from_cache=False))
    return Prediction(outputs, np.mean([o.probs for o in outputs], axis=0), device="cpu")


@pytest.fixture(scope="module")
def evaluation_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    write_fixture_evaluation(root, MODELS, n_studies=12, n_boot=20)
    return root


# ---- Predict tab ---------------------------------------------------------------------------------------------

def test_probability_figure_stacks_the_three_grades_for_every_model_and_the_ensemble(prediction):
    figure = charts.probability_figure(prediction, "L3/L4")
    assert [trace.name for trace in figure.data] == list(SEVERITIES)
    assert list(figure.data[0].y) == [name for _, name in MODELS] + [ENSEMBLE]
    totals = np.sum([trace.x for trace in figure.data], axis=0)
    np.testing.assert_allclose(totals, 100.0, atol=1e-6)
    np.testing.assert_allclose(figure.data[2].x[0], 100 * prediction.outputs[0].probs[2, 2])
    assert figure.data[0].marker.color == charts.GRADE_COLOURS["Normal/Mild"]


def test_grade_grid_shows_every_level_and_outlines_the_chosen_one(prediction):
    figure = charts.grade_grid_figure(prediction, "L5/S1")
    heatmap = figure.data[0]
    assert list(heatmap.x) == list(LEVELS) and list(heatmap.y) == [name for _, name in MODELS] + [ENSEMBLE]
    expected = [[SEVERITIES[int(np.argmax(row))] for row in o.probs] for o in prediction.outputs]
    assert [list(row) for row in heatmap.text[:-1]] == expected
    (outline,) = figure.layout.shapes
    assert (outline.x0, outline.x1) == (3.5, 4.5)


def test_slice_analysis_json_adds_warnings_source_and_demo_to_the_prediction(prediction):
    facts = SliceFacts("DICOM", rows=512, columns=448, window_source="DICOM window", warnings=("A warning.",))
    analysis = SliceAnalysis(prediction, facts, demo=True)
    result = analysis.to_dict("L4/L5")
    assert result["source"] == "DICOM 448x512, DICOM window"
    assert result["warnings"] == ["A warning."] and result["demo"] is True
    assert set(result["models"]) == {name for _, name in MODELS}
    table = probability_table(result)
    assert list(table["Model"]) == [name for _, name in MODELS] + [ENSEMBLE]
    assert table.loc[0, "Grade"] == result["models"]["ViT-B/16"]["grade"]
    assert table.loc[0, "Device"] == "cpu" and table.loc[0, "Time (ms)"] == "12.5"
    grade, probability = analysis.ensemble_grade("L4/L5")
    assert grade == result["ensemble"]["grade"] and probability == pytest.approx(max(
        result["ensemble"][g] for g in SEVERITIES), abs=1e-6)


def test_describe_source_never_goes_beyond_format_size_and_window():
    facts = SliceFacts("DICOM", rows=256, columns=256, window_source="auto (0.5-99.5 percentile)",
                       photometric="MONOCHROME1", frames=9, frame_used=4)
    assert describe_source(facts) == ("DICOM 256x256, auto (0.5-99.5 percentile), MONOCHROME1 (inverted), "
                                      "frame 5 of 9")


def test_preview_is_an_inline_png_shrunk_for_the_page():
    pixels = np.linspace(0, 1, 1024 * 768, dtype=np.float32).reshape(768, 1024)
    html = preview_html(pixels, "caption <b>")
    encoded = html.split("base64,")[1].split('"')[0]
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert image.format == "PNG" and max(image.size) == 512
    assert "caption &lt;b&gt;" in html
    assert Image.open(io.BytesIO(preview_png(pixels[:100, :80]))).size == (80, 100)


# ---- Uploads -------------------------------------------------------------------------------------------------

def test_an_upload_is_read_then_deleted_with_its_folder(tmp_path):
    root = tmp_path / "uploads"
    upload = root / "0f3a" / "Jane_Doe.dcm"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"slice bytes")
    assert consume_upload(upload, root) == b"slice bytes"
    assert not upload.exists() and not upload.parent.exists() and root.exists()


def test_a_file_outside_the_upload_folder_is_read_but_kept(tmp_path):
    kept = tmp_path / "example.png"
    kept.write_bytes(b"example")
    assert consume_upload(kept, tmp_path / "uploads") == b"example"
    assert kept.exists() and remove_upload(kept, tmp_path / "uploads") is False


def test_a_vanished_upload_gets_a_plain_message(tmp_path):
    with pytest.raises(ImageReadError, match="no longer on the server"):
        consume_upload(tmp_path / "uploads" / "x" / "gone.dcm", tmp_path / "uploads")


# ---- Words ---------------------------------------------------------------------------------------------------

def test_the_banner_says_demo_weights_and_names_the_failed_model(tmp_path, cpu_models):
    models = [LoadedModel("vit_b16", "ViT-B/16", cpu_models[0], f"local: {tmp_path}/checkpoints/vit_b16"),
              LoadedModel("swin_b", "Swin-B", cpu_models[1], "hub: org/spinecad-swin-b@0123456789ab",
                          note="Hub copy unavailable (offline); using the local copy.")]
    failures = [LoadFailure("beit_b", "BEiT-B", f"BEiT-B: no checkpoint folder at {tmp_path}/checkpoints/beit_b.")]
    banner = ui_text.banner_markdown(title="Phantom demo set", demo=True, models=models, failures=failures,
                                     device="cuda:0", manifest_root=tmp_path / "checkpoints")
    assert "Demo weights, not for clinical use" in banner and "synthetic phantom images" in banner
    assert "**2 of 3 models loaded** on **GPU (CUDA)** from *Phantom demo set*" in banner
    assert "ViT-B/16 from local folder `checkpoints/`" in banner
    assert "Swin-B from Hub `org/spinecad-swin-b@0123456789ab`" in banner
    assert "Swin-B: Hub copy unavailable" in banner
    assert "**BEiT-B could not be loaded**: BEiT-B: no checkpoint folder at checkpoints/beit_b." in banner
    assert str(tmp_path) not in banner


def test_a_real_model_set_gets_no_demo_warning(cpu_models):
    banner = ui_text.banner_markdown(title="Paper models", demo=False, device="cpu", failures=[],
                                     models=[LoadedModel("vit_b16", "ViT-B/16", cpu_models[0], "hub: org/x@abc")])
    assert "Demo weights" not in banner and "1 of 1 models loaded" in banner


def test_headline_reads_as_one_sentence():
    assert ui_text.headline_markdown("L4/L5", "Severe", 0.8123, 6, 6) == (
        "### L4/L5: **Severe** (81% ensemble confidence); all models agree.")
    assert ui_text.headline_markdown("L1/L2", "Moderate", 0.5, 4, 6).endswith("4 of 6 models agree.")



def test_the_headline_says_when_not_to_trust_it_before_it_names_a_grade():
    unfamiliar = ui_text.headline_markdown("L4/L5", "Severe", 0.9, 6, 6, unfamiliar=True)
    split = ui_text.headline_markdown("L4/L5", "Moderate", 0.4, 2, 6, split=True)
    assert unfamiliar.index("have not seen images like this") < unfamiliar.index("**Severe**")
    assert split.index("no grade has a majority") < split.index("**Moderate**")
    assert "⚠️" not in ui_text.headline_markdown("L4/L5", "Severe", 0.9, 6, 6)


def test_models_are_split_when_no_grade_has_a_majority():
    def prediction(grades: list[int]) -> Prediction:
        outputs = [ModelOutput(str(k), str(k), np.tile(np.eye(3)[g], (len(LEVELS), 1)), 1.0, False,
                               familiarity=0.5 + k) for k, g in enumerate(grades)]
        return Prediction(outputs, np.mean([o.probs for o in outputs], axis=0), device="cpu")

    assert prediction([0, 0, 1, 1, 2, 2]).split("L4/L5") and not prediction([0, 0, 0, 0, 1, 2]).split("L4/L5")
    assert prediction([0, 0, 1, 1, 2, 2]).split("L4/L5") is True
    assert not prediction([0, 0, 0, 1]).split(0) and prediction([0, 0, 1, 1]).split(0)  # a tie is no majority
    # familiarity 0.5, 1.5, 2.5, ...: models 1 and up are past their thresholds, so most of them say unfamiliar.
    assert prediction([0, 1, 2]).unfamiliar is True and prediction([0, 1]).unfamiliar is False


# ---- Compare tab ---------------------------------------------------------------------------------------------

def test_shown_models_are_the_loaded_ones_and_the_ensemble(evaluation_root):
    assert comparison.shown_model_keys(evaluation_root, ["swin_b", "vit_b16"]) == ["vit_b16", "swin_b", "ensemble"]
    # An evaluation of other models than those loaded is shown whole rather than not at all.
    assert comparison.shown_model_keys(evaluation_root, ["other"]) == ["vit_b16", "swin_b", "resnet152", "ensemble"]


def test_metrics_table_has_the_paper_rows_and_an_interval_per_cell(evaluation_root):
    columns = comparison.load_columns(evaluation_root, "test", ["vit_b16", "ensemble"])
    table = metrics_table(columns)
    assert list(table.columns) == ["Group", "Metric", "ViT-B/16", "Ensemble (mean)"]
    assert len(table) == 5 + 5 * len(SEVERITIES) + 3 + 5  # overall, per grade, RSNA metric, calibration
    assert list(table["Group"][table["Group"] != ""]) == ["Overall", *SEVERITIES, RSNA_GROUP, "Calibration"]
    document = evaluation.load_metrics(evaluation_root, "vit_b16", "test")
    groups = table["Group"].replace("", np.nan).ffill()
    by_row = dict(zip(zip(groups, table["Metric"], strict=True), table["ViT-B/16"], strict=True))
    roc = document.intervals.overall.macro_roc_auc
    assert by_row[("Overall", "Macro ROC-AUC")] == (f"{document.metrics.macro_roc_auc:.3f} "
                                                    f"[{roc.low:.3f}, {roc.high:.3f}]")
    assert by_row[("Severe", "F1-Score")].startswith(f"{document.metrics.per_class['Severe'].f1:.3f} [")
    assert all(re.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", cell) for cell in table["ViT-B/16"][:-5])
    assert two_line_cells(table).loc[0, "ViT-B/16"].count("<br><small>") == 1


def test_metrics_table_ends_with_ece_before_and_after_temperature_scaling(evaluation_root):
    columns = comparison.load_columns(evaluation_root, "test", ["vit_b16", "ensemble"])
    calibration = metrics_table(columns).tail(5)
    assert list(calibration["Metric"]) == ["ECE, raw", "ECE, calibrated", "Log loss, raw", "Log loss, calibrated",
                                           "Temperature"]
    document = evaluation.load_metrics(evaluation_root, "vit_b16", "test").calibration
    assert list(calibration["ViT-B/16"]) == [f"{document.ece:.3f}", f"{document.calibrated.ece:.3f}",
                                             f"{document.log_loss:.3f}", f"{document.calibrated.log_loss:.3f}",
                                             f"{document.calibrated.temperature:.2f}"]
    assert list(calibration["Ensemble (mean)"])[4] == "per model"  # the fixture's ensemble has no temperature


def test_outside_predictions_are_scored_like_the_stored_ones(evaluation_root):
    stored = evaluation.load_predictions(evaluation_root, "ensemble", "test")
    labels = comparison.split_labels(evaluation_root, "test", "vit_b16")
    submission = stored[["row_id", *SEVERITY_COLUMNS]]
    outside = comparison.score_outside(_as_uploaded_csv(submission), labels, name=ui_text.OUTSIDE_NAME, n_boot=20)
    document = evaluation.load_metrics(evaluation_root, "ensemble", "test")
    for name in ("accuracy", "macro_f1", "macro_roc_auc", "macro_pr_auc"):
        assert getattr(outside.metrics, name) == pytest.approx(getattr(document.metrics, name))
    assert outside.confusion.counts == document.confusion.counts
    assert outside.intervals.n_boot == 20
    assert outside.note == f"Scored on {len(labels)} of {len(labels)} labelled rows of this split."


def test_outside_predictions_covering_part_of_the_split_say_so(evaluation_root):
    labels = comparison.split_labels(evaluation_root, "test", "vit_b16")
    half = evaluation.load_predictions(evaluation_root, "swin_b", "test").iloc[: len(labels) // 2]
    submission = half[["row_id", *SEVERITY_COLUMNS]].copy()
    submission.loc[len(submission)] = ["123_left_neural_foraminal_narrowing_l1_l2", 1, 0, 0]
    outside = comparison.score_outside(_as_uploaded_csv(submission), labels, name=ui_text.OUTSIDE_NAME, n_boot=10)
    assert outside.note.startswith(f"Scored on {len(labels) // 2} of {len(labels)} labelled rows")
    assert "1 row(s) of other conditions skipped" in outside.note


def test_outside_predictions_that_cannot_be_read_or_matched_are_refused(evaluation_root):
    labels = comparison.split_labels(evaluation_root, "val", "vit_b16")
    with pytest.raises(ScoringError, match="row_id,normal_mild,moderate,severe"):
        comparison.read_outside_predictions(b"\xff\xfe\x00garbage")
    test_rows = evaluation.load_predictions(evaluation_root, "vit_b16", "test")[["row_id", *SEVERITY_COLUMNS]]
    with pytest.raises(ScoringError, match="no valid prediction matches"):
        comparison.score_outside(test_rows, labels, name=ui_text.OUTSIDE_NAME)


def test_curve_and_matrix_figures_overlay_every_column(evaluation_root):
    columns = comparison.load_columns(evaluation_root, "test", ["vit_b16", "swin_b", "ensemble"])
    roc = charts.roc_figure(columns)
    named = [trace for trace in roc.data if trace.name != "chance"]
    assert len(named) == len(columns) * len(SEVERITIES)
    assert {trace.name for trace in named} == {c.name for c in columns}
    ensemble = next(trace for trace in named if trace.name == "Ensemble (mean)")
    assert ensemble.line.color == charts.ENSEMBLE_COLOUR
    pr = charts.pr_figure(columns)
    assert sum(trace.name == "chance (prevalence)" for trace in pr.data) == len(SEVERITIES)
    confusion = charts.confusion_figure(columns[-1].confusion, "Ensemble on test")
    assert len(confusion.data) == 2 and confusion.data[0].z.sum() == columns[-1].metrics.n
    np.testing.assert_allclose(np.asarray(confusion.data[1].z).sum(axis=1), 1.0)


def test_history_figure_draws_validation_and_training_per_model(evaluation_root):
    histories = comparison.load_histories(evaluation_root, ["vit_b16", "swin_b", "ensemble"])
    assert list(histories) == ["ViT-B/16", "Swin-B"]  # the ensemble has no history
    figure = charts.history_figure(histories)
    assert len(figure.data) == 2 * 2 * 2  # models x (loss, F1) x (val, train)
    assert sum(bool(trace.showlegend) for trace in figure.data) == 2
    assert isinstance(charts.history_figure({}), go.Figure)


def test_reliability_figure_puts_raw_and_calibrated_side_by_side_per_model(evaluation_root):
    columns = comparison.load_columns(evaluation_root, "val", ["vit_b16", "swin_b", "ensemble"])
    figure = charts.reliability_figure(columns)
    curves = [trace for trace in figure.data if trace.name != "perfectly calibrated"]
    assert len(curves) == 2 * len(columns)  # raw and temperature-scaled per model
    assert list(curves[1].y) == columns[0].reliability_calibrated.observed
    titles = [annotation.text for annotation in figure.layout.annotations]
    ece = columns[0].calibration
    assert titles[0] == f"ViT-B/16<br>ECE {ece.ece:.3f} → {ece.calibrated.ece:.3f}"
    assert "No reliability" in charts.reliability_figure([]).layout.annotations[0].text


def test_significance_figure_stars_exactly_the_intervals_that_exclude_zero(evaluation_root):
    keys = ["vit_b16", "swin_b", "resnet152", "ensemble"]
    matrices, facts = comparison.load_difference_matrices(evaluation_root, keys)
    assert facts.split == "test" and matrices[0].names == [
        "ViT-B/16", "Swin-B", "ResNet-152", "Ensemble (mean)"]
    figure = charts.significance_figure(matrices)
    assert len(figure.data) == 2
    for matrix, trace in zip(matrices, figure.data, strict=True):
        assert list(trace.y) == matrix.names[1:] and list(trace.x) == matrix.names[:-1]
        for i in range(1, len(matrix.names)):
            for j in range(len(matrix.names) - 1):
                cell = trace.text[i - 1][j]
                if j >= i:
                    assert cell == ""  # each pair once
                else:
                    assert ("★" in cell) == bool(matrix.excludes_zero[i, j])
                    assert f"{matrix.difference[i, j]:+.3f}" in cell and f"{matrix.low[i, j]:+.3f}" in cell


def test_heatmap_gallery_is_inline_images_with_model_grade_and_cost():
    pixels = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    heat = np.zeros_like(pixels)
    heat[20:30, 20:30] = 1.0
    shown = Heatmap("resnet", "ResNet-152", "L4/L5", "Severe", 0.8, heat, overlay_heatmap(pixels, heat), 0.04,
                    "HiResCAM · layer4")
    refused = Heatmap("hf", "Rad<DINO>", "L4/L5", None, None, None, None, 0.0, "none", "No layer <known>.")
    page = heatmap_gallery_html([shown, refused])
    assert page.count("<img") == 1 and 'src="data:image/png;base64,' in page
    assert "ResNet-152" in page and "Severe (80%)" in page and "0.04 s" in page
    assert "Rad&lt;DINO&gt;" in page and "No layer &lt;known&gt;." in page
    overlay = overlay_heatmap(pixels, heat)
    assert overlay.shape == (64, 48, 3)
    np.testing.assert_array_equal(overlay[0, 0], [0, 0, 0])  # where the map is zero, the slice shows as it is
    assert not np.array_equal(overlay[25, 25], np.repeat(overlay[25, 25, 0], 3))  # coloured where it is high


def test_model_colours_are_stable_and_the_ensemble_is_black():
    colours = charts.model_colours(["A", "B", "Ensemble (mean)"])
    assert colours == {"A": charts.MODEL_PALETTE[0], "B": charts.MODEL_PALETTE[1], "Ensemble (mean)": "#000000"}


# ---- Examples ------------------------------------------------------------------------------------------------

def test_the_committed_examples_are_small_readable_and_labelled():
    examples = read_example_index(EXAMPLES_DIR)
    assert len(examples) == 8
    assert {e.true_grade for e in examples} == {*SEVERITIES, "n/a"}
    assert {e.format for e in examples} == {"DICOM", "PNG"}
    for example in examples:
        path = EXAMPLES_DIR / example.file
        assert path.stat().st_size < 64 * 1024
        image = read_slice(path)
        assert image.facts.source_format == example.format
        assert bool(image.warnings) == (example.true_grade == "n/a")
    assert any("." not in e.file for e in examples)  # a DICOM without an extension


def test_write_examples_reproduces_the_committed_index(tmp_path):
    from train.examples import write_examples

    written = write_examples(tmp_path)
    assert written == read_example_index(tmp_path) == read_example_index(EXAMPLES_DIR)
    committed = np.asarray(Image.open(EXAMPLES_DIR / "severe_axial.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "severe_axial.png")), committed)


def _as_uploaded_csv(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as the app reads an uploaded file: CSV bytes back to text columns."""
    return comparison.read_outside_predictions(frame.to_csv(index=False).encode())
