"""SpineCAD: spinal canal stenosis grading from single axial lumbar MRI slices.

Data flows one way: files -> ``spinecad.imaging`` -> ``spinecad.preprocess`` -> ``spinecad.model`` ->
``spinecad.predict`` -> ``spinecad.metrics`` / charts -> app. The training package (``train``) and the app
(``app.py``) both stand on this library and never on each other.
"""

__version__ = "0.1.0"
