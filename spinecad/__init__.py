"""SpineCAD: spinal canal stenosis grading from axial lumbar MRI.

The layers, in the one direction data flows (each imports only those before it)::

    spinecad.atomic, spinecad.labels, spinecad.examples   files and the grading vocabulary
    spinecad.imaging      reading: DICOM / PNG / JPEG bytes -> a Slice (pixels + non-identifying facts)
    spinecad.models       the backbone registry, the model (backbone + level embedding + head), its card
    spinecad.inference    the manifest, loading, the predictor, heatmaps as arrays
    spinecad.evaluation   metrics, bootstrap, the evaluation-artefact format and store, scoring
    spinecad.ui           presentation: the Gradio app, charts, HTML, wording (nothing below imports it)

The training package (``train``) and the app (``app.py``) both stand on this library and never on each other.
"""

__version__ = "0.2.0"
