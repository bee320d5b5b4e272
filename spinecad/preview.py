"""The slice as the models see it (window applied), as an inline PNG: shown to the visitor, never written to disk."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from PIL import Image

PREVIEW_MAX_SIDE = 512  # pixels; larger slices are shrunk for the page only, the models get the full slice


def preview_png(pixels: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """PNG bytes of a [0, 1] greyscale slice, shrunk to ``max_side`` if larger."""
    image = Image.fromarray(np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8))
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def preview_html(pixels: np.ndarray, caption: str) -> str:
    """An <img> holding the PNG as a data URI, so no copy of the slice lands in the server's file cache."""
    encoded = base64.b64encode(preview_png(pixels)).decode("ascii")
    return (
        '<figure class="spinecad-preview">'
        f'<img src="data:image/png;base64,{encoded}" alt="The uploaded slice after windowing">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )
