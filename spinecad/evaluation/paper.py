"""The study's own Table 2 (``shared/PAPER.md``, appendix), as reported on its test split: a reference to show beside
the loaded models, never part of their significance tests or curves. Values are copied exactly, three decimals."""

from __future__ import annotations

# The paper's column order, and the registry family each column is.
PAPER_MODELS: dict[str, str] = {
    "BEiT": "beit_b", "ViT": "vit_b16", "ResNet": "resnet152", "ConvNeXt": "convnext_b",
    "EfficientNet": "efficientnetv2_m", "Swin": "swin_b",
}
# (group, metric) -> one value per column of PAPER_MODELS, rows in the paper's order.
PAPER_TABLE_2: dict[tuple[str, str], tuple[float, ...]] = {
    ("Overall", "Accuracy"): (0.872, 0.872, 0.836, 0.847, 0.768, 0.852),
    ("Overall", "Macro F1"): (0.564, 0.549, 0.512, 0.523, 0.471, 0.516),
    ("Overall", "Weighted F1"): (0.865, 0.864, 0.840, 0.845, 0.800, 0.849),
    ("Overall", "Macro ROC-AUC"): (0.855, 0.856, 0.818, 0.840, 0.808, 0.836),
    ("Overall", "Macro PR-AUC"): (0.550, 0.541, 0.490, 0.524, 0.473, 0.507),
    ("Normal/Mild", "Precision"): (0.928, 0.925, 0.926, 0.923, 0.939, 0.928),
    ("Normal/Mild", "Recall"): (0.953, 0.956, 0.912, 0.928, 0.826, 0.934),
    ("Normal/Mild", "F1-Score"): (0.940, 0.940, 0.919, 0.925, 0.879, 0.931),
    ("Normal/Mild", "ROC-AUC"): (0.868, 0.871, 0.842, 0.847, 0.830, 0.863),
    ("Normal/Mild", "PR-AUC"): (0.975, 0.977, 0.970, 0.971, 0.969, 0.976),
    ("Moderate", "Precision"): (0.345, 0.366, 0.273, 0.257, 0.209, 0.318),
    ("Moderate", "Recall"): (0.259, 0.285, 0.297, 0.241, 0.335, 0.222),
    ("Moderate", "F1-Score"): (0.296, 0.320, 0.285, 0.248, 0.258, 0.261),
    ("Moderate", "ROC-AUC"): (0.785, 0.801, 0.775, 0.770, 0.749, 0.761),
    ("Moderate", "PR-AUC"): (0.300, 0.264, 0.263, 0.220, 0.206, 0.234),
    ("Severe", "Precision"): (0.471, 0.443, 0.314, 0.396, 0.201, 0.302),
    ("Severe", "Recall"): (0.440, 0.341, 0.352, 0.396, 0.440, 0.429),
    ("Severe", "F1-Score"): (0.455, 0.385, 0.332, 0.396, 0.276, 0.355),
    ("Severe", "ROC-AUC"): (0.913, 0.895, 0.838, 0.904, 0.845, 0.883),
    ("Severe", "PR-AUC"): (0.374, 0.383, 0.237, 0.380, 0.243, 0.313),
}
