"""The words of the app, written for radiologists, students and a lecture audience rather than ML engineers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from spinecad.inference.loading import LoadedModel, LoadFailure

TITLE = "SpineCAD: how narrow is the lumbar spinal canal?"
SPLIT_NAMES: dict[str, str] = {"val": "Validation", "test": "Test", "train": "Training"}
OUTSIDE_NAME = "Your model (uploaded)"
NO_MANIFEST = "Run `python -m train --demo`, or point SPINECAD_MANIFEST at a manifest."
UNFAMILIAR_WARNING = (
    "These models have not seen images like this: the grades below are not meaningful. The models were trained on "
    "axial T2 MRI slices through a lumbar disc."
)
UNFAMILIAR_HEADLINE = "### ⚠️ Not like the images these models learnt from\n\n" + UNFAMILIAR_WARNING
SPLIT_HEADLINE = "### ⚠️ The models disagree: no grade has a majority of them. Read the image yourself."
PAPER_TABLE_TITLE = "Reported in the paper (its own test split of the RSNA 2024 data; not reproduced here)"
PAPER_TABLE_NOTE = (
    "The study's own Table 2, exactly as it reports it (bold: best in each row), for comparison beside the loaded "
    "models. These numbers come from the paper's models on its own test split: they are not in the significance "
    "tests or the curves below, and the loaded models were not tested on that split."
)

PREDICT_INTRO = (
    "Give the app **one axial T2-weighted MRI slice through a lumbar disc** and tell it which disc it is. "
    "Six AI models, each built on a different well-known image network, estimate how narrow the spinal canal is "
    "there; the **ensemble** is the average of the six."
)

UPLOAD_HELP = "DICOM (with or without .dcm), PNG or JPEG. The file is deleted from the server as soon as it is read."

GRADES_EXPLAINED = """\
**What the grades mean**

- **Normal/Mild**: the dural sac (the bright, fluid-filled tube around the nerve roots) keeps its round shape;
  little or no narrowing.
- **Moderate**: the sac is clearly narrowed or flattened, but fluid still surrounds the nerve roots.
- **Severe**: the sac is squeezed so much that the nerve roots are crowded together with little or no fluid
  between them.

The percentages are each model's confidence in each grade (they add up to 100%). When the models disagree, look at
the image yourself: disagreement is a sign the case is borderline or unlike what the models were trained on.

**This is a research demonstration, not a diagnosis.** It has not been validated for clinical use and must not
guide the care of a patient.
"""

PREVIEW_CAPTION = "What the models see: your slice after windowing, before it is resized for each model."
PREVIEW_PLACEHOLDER = (
    '<div class="spinecad-placeholder">Upload a slice or pick an example below: it will appear here.</div>'
)
RESULT_PLACEHOLDER = "*The result appears here once a slice is read.*"
CACHED_NOTE = "*This image was seen moments ago, so its features came from the cache: the times are the heads' only.*"
CALIBRATED_NOTE = "*Calibrated probabilities: each model's confidences rescaled by its fitted temperature.*"
LEVEL_SWITCH_NOTE = "Switching the level re-reads the stored result: the models do not run again."

COMPARE_INTRO = """\
How well did each model grade slices it **never saw during training**? Pick the validation split (used to choose
the best training epoch and to fit each model's calibration) or the test split (held back until the end). The
small numbers under each value are its **95% confidence interval**: where the score would likely fall with another
sample of patients (patient-level bootstrap). Further down: how far to trust each model's percentages
(calibration), and whether one model is really better than another or only luckier on this sample.
"""

COMPARE_DEMO_NOTE = (
    "\n> ⚠️ These results are on **synthetic phantom images**: they show what the tab can do, not how well the "
    "models would grade real patients.\n"
)

METRICS_EXPLAINED = """\
**Reading the table.** *Accuracy*: share of levels graded right. *F1*: balance of precision (how often a predicted
grade is right) and recall (how many of the true cases were found); *macro* averages the three grades equally, so
the rare Severe grade counts as much as Normal/Mild. *ROC-AUC*: chance that the model ranks a random case of a grade
above a random case without it (0.5 = coin toss, 1 = perfect). *PR-AUC*: the same idea, focused on finding the cases
of a grade; it is low for rare grades unless the model is genuinely good.
"""

CURVES_EXPLAINED = (
    "Each panel asks one question: *is this level of that grade or not?* Curves toward the top left (ROC) or top "
    "right (precision-recall) are better; the dotted line is what guessing would give."
)

# Reading aids: two or three plain sentences beside each chart of the Compare tab.
ROC_EXPLAINED = (
    "**How to read it.** Lowering the bar for calling a grade finds more of its cases (up) but raises more false "
    "alarms (right). The dotted diagonal is a coin toss: a curve on it ranks cases no better than chance. The "
    "closer a curve hugs the top-left corner, the better; the area under it is the ROC-AUC."
)
PR_EXPLAINED = (
    "**How to read it.** Recall: how many of the true cases a model finds; precision: how many of its alarms are "
    "right. For a rare grade such as Severe, a ROC curve can look good while most alarms are false; this curve "
    "shows it. The dotted line is the grade's prevalence, what calling every level that grade would give."
)
CONFUSION_EXPLAINED = (
    "**How to read it.** Rows are the true grade, columns the grade the model gave; the diagonal is right. The "
    "right panel divides each row by its total, so every row sums to 100% and a rare grade weighs as much as a "
    "common one: read along a row to see how often that grade was caught and what it was mistaken for."
)
HISTORY_EXPLAINED = (
    "**How to read it.** Validation solid, training dotted, one colour per model. Training loss keeps falling; when "
    "validation loss stops falling or rises while the gap widens, the model is learning its training images by "
    "heart (overfitting). The saved model is the epoch with the best validation macro F1."
)
RELIABILITY_EXPLAINED = (
    "**How to read it.** Levels are grouped by how confident a model was in its grade (across) and each point shows "
    "how often that grade was right (up). On the dotted diagonal, 80% confidence means right 80% of the time; "
    "below it a model is over-confident, above it timid. ECE (in the table) is the average gap; the temperature "
    "is fitted on validation, so the test split is the honest check, and it never changes a grade."
)
SIGNIFICANCE_EXPLAINED = (
    "**How to read it.** Each cell is the row model's score minus the column model's on the test split, with a 95% "
    "interval from resampling patients (both models scored on the same resampled patients). Blue: the row model "
    "scored higher; red: lower. ★ marks an interval that excludes zero; without it the data cannot tell the two "
    "apart, and among this many comparisons one or two ★ can appear by chance."
)

HEATMAP_EXPLAINED = """\
**How to read it.** Each picture is the slice with one model's heatmap over it, for the grade that model gives at
this level. Red marks the regions that raised that grade's score most; uncoloured regions did not raise it. A
heatmap shows *where* a model looked, not whether it was right: check that it looks at the spinal canal.
"""
HEATMAP_PLACEHOLDER = (
    '<div class="spinecad-placeholder spinecad-small">Press <b>Explain</b> to see where each model looked at this '
    "level (a few seconds on a CPU).</div>"
)
PROBABILITIES_HELP = (
    "*Raw*: each model's own confidence. *Calibrated*: rescaled by a temperature fitted on the validation split, "
    "so that 80% means right about 80% of the time there. The grades do not change."
)

OUTSIDE_HELP = (
    "Compare your own model: upload its predictions as a CSV with the columns `row_id,normal_mild,moderate,severe` "
    "(the RSNA 2024 Kaggle submission format, e.g. `4003253_spinal_canal_stenosis_l4_l5,0.7,0.2,0.1`). It is scored "
    "on the rows of the chosen split it covers, with the same code as the models above."
)


API_HELP = """\
The same result, for scripts (`pip install gradio_client`):

```python
from gradio_client import Client, handle_file
client = Client("<this Space's URL or owner/name>")
result = client.predict(handle_file("slice.dcm"), "L4/L5", api_name="/predict")
print(result["ensemble"]["grade"], result["all_levels"])
```

A file that cannot be read raises an error whose message says why. Add `"calibrated"` as a third argument for
temperature-scaled probabilities. Heatmaps (each overlay as a PNG data URI):

```python
heatmaps = client.predict(handle_file("slice.dcm"), "L4/L5", api_name="/explain")
heatmaps["models"]["ResNet-152"]["image"]   # "data:image/png;base64,..."
```
"""


def banner_markdown(
    *,
    title: str,
    demo: bool,
    models: Sequence[LoadedModel],
    failures: Sequence[LoadFailure],
    device: str,
    manifest_root: Path | None = None,
    problem: str | None = None,
) -> str:
    """The banner over the app: which models serve, from where, on what; what failed; whether they are demo weights."""
    lines = [f"## {TITLE}"]
    if demo:
        lines.append(
            "> ⚠️ **Demo weights, not for clinical use.** These models were trained on *synthetic phantom images*, "
            "not on patients' scans, to show how the app works. Their grades for a real MRI mean nothing."
        )
    if problem:
        lines.append(f"> ✖ **No models could be read.** {problem}")
    total = len(models) + len(failures)
    if models:
        lines.append(f"**{len(models)} of {total} models loaded** on **{_device(device)}** from *{title}*: "
                     f"{_where_from(models, manifest_root)}.")
    for model in models:
        if model.note:
            lines.append(f"- ℹ️ {model.name}: {_relative(model.note, manifest_root)}")
    for failure in failures:
        lines.append(f"- ✖ **{failure.name} could not be loaded**: {_relative(failure.reason, manifest_root)}")
    if failures and models:
        lines.append("The other models still serve; the ensemble averages the models that loaded.")
    return "\n\n".join(lines)


def headline_markdown(level: str, grade: str, probability: float, agreeing: int, n_models: int, *,
                      unfamiliar: bool = False, split: bool = False) -> str:
    """One sentence a room can read from the back: the ensemble's grade and how many models agree, after what
    says not to trust it (an unfamiliar image, or models with no majority)."""
    agreement = "all models agree" if agreeing == n_models else f"{agreeing} of {n_models} models agree"
    grade_line = f"### {level}: **{grade}** ({probability:.0%} ensemble confidence); {agreement}."
    cautions = [UNFAMILIAR_HEADLINE] * unfamiliar + [SPLIT_HEADLINE] * split
    return "\n\n".join([*cautions, grade_line])


def warnings_markdown(warnings: Sequence[str]) -> str:
    """The reader's warnings about the slice, or nothing."""
    return "\n".join(f"> ⚠️ {warning}" for warning in warnings)


def _device(device: str) -> str:
    return "GPU (CUDA)" if device.startswith("cuda") else device.upper()


def _where_from(models: Sequence[LoadedModel], manifest_root: Path | None) -> str:
    """Model names grouped by where their weights were read: a local folder, or a Hub repo at a revision."""
    groups: dict[str, list[str]] = {}
    for model in models:
        kind, _, where = model.source.partition(": ")
        if kind == "hub":
            label = f"Hub `{where}`"
        else:
            label = f"local folder `{_relative(str(Path(where).parent), manifest_root)}/`"
        groups.setdefault(label, []).append(model.name)
    return "; ".join(f"{', '.join(names)} from {label}" for label, names in groups.items())


def _relative(text: str, manifest_root: Path | None) -> str:
    # Server paths mean nothing to a visitor: show them from the checkpoints folder on.
    if manifest_root is None:
        return text
    return text.replace(str(manifest_root.parent) + "/", "").replace(str(manifest_root.parent), ".")
