"""The slice as the models see it (window applied), and its heatmaps, as inline PNGs: shown, never written to disk."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from spinecad.inference.heatmaps import Heatmap

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


def png_data_uri(image: np.ndarray) -> str:
    """A uint8 RGB (H, W, 3) or [0, 1] greyscale (H, W) image as a ``data:image/png;base64,...`` URI."""
    if image.ndim == 2:
        return "data:image/png;base64," + base64.b64encode(preview_png(image)).decode("ascii")
    buffer = io.BytesIO()
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if max(picture.size) > PREVIEW_MAX_SIDE:
        picture.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE), Image.Resampling.LANCZOS)
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def heatmap_gallery_html(heatmaps: Sequence[Heatmap]) -> str:
    """The heatmap overlays side by side as inline images, each captioned with its model, grade and cost."""
    figures = []
    for heatmap in heatmaps:
        name = html.escape(heatmap.name)
        if heatmap.overlay is None:
            body = f'<div class="spinecad-noheatmap">{html.escape(heatmap.problem or "No heatmap.")}</div>'
        else:
            alt = f"{name}: heatmap for {heatmap.grade} over the slice"
            body = f'<img src="{png_data_uri(heatmap.overlay)}" alt="{html.escape(alt)}">'
        caption = f"<b>{name}</b>"
        if heatmap.grade is not None:
            caption += f"<br>{html.escape(heatmap.grade)} ({heatmap.probability:.0%})"
        caption += f"<br><small>{html.escape(heatmap.method)} · {heatmap.seconds:.2f} s</small>"
        if heatmap.problem and heatmap.overlay is not None:
            caption += f"<br><small>{html.escape(heatmap.problem)}</small>"
        figures.append(f'<figure class="spinecad-heatmap">{body}<figcaption>{caption}</figcaption></figure>')
    return f'<div class="spinecad-heatmaps">{"".join(figures)}</div>'
