"""Temperature scaling: one number per model, fitted on the validation split, stored in the model's config.

Dividing the logits by a temperature T > 1 softens over-confident probabilities and T < 1 sharpens timid ones;
the grade a model gives (the argmax) never changes. T minimises the negative log-likelihood of the validation
labels (Guo et al., 2017), searched on log T so both directions are treated alike.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from spinecad.logs import warn_once

logger = logging.getLogger(__name__)

TEMPERATURE_BOUNDS = (0.05, 20.0)
METHOD = "temperature scaling fitted on the validation split (NLL)"
ENSEMBLE_METHOD = ("mean of the models' temperature-scaled probabilities, then temperature scaling of that mean "
                   "fitted on the validation split (NLL)")


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of ``labels`` under softmax(logits / temperature)."""
    log_probs = log_softmax(np.asarray(logits, dtype=float) / temperature, axis=1)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in TEMPERATURE_BOUNDS that minimises the validation NLL (bounded 1-D search on log T)."""
    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0 or len(np.unique(labels)) < 2:
        warn_once(logger, "Temperature left at 1.0: the validation split needs labels of two grades or more.")
        return 1.0  # nothing to calibrate against
    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    result = minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, math.exp(log_t)),
                             bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(result.x))
