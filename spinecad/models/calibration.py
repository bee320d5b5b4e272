"""Temperature scaling: the one formula by which a model's, or the ensemble's, probabilities are recalibrated."""

from __future__ import annotations

import numpy as np


def temperature_scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities a model gives once its logits are divided by ``temperature`` (temperature scaling).

    log(p) equals the logits up to a constant per row, which softmax ignores, so probabilities suffice.
    """
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number; got {temperature!r}.")
    logits = np.log(np.clip(np.asarray(probs, dtype=float), np.finfo(float).tiny, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)
