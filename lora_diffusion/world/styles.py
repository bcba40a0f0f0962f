"""Looks the built-in base does not draw by itself, and a score for how strongly an image shows each.

The example folders under ``examples/styles/`` are world scenes rendered in one of
these looks; a style LoRA trained on a folder should raise that style's score.
Each score is in [0, 1] and needs no model: tests and the quickstart use them to
check that a LoRA moved generations toward its style.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .scenes import Scene, render

STYLES = ("sepia", "pixel")
_SEPIA_MATRIX = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32)
_SEPIA_SCALE, _SEPIA_LIFT = 0.7, 10.0
# the matrix rows are nearly proportional, so every sepia pixel lies on one line in RGB
_SEPIA_DIRECTION = _SEPIA_MATRIX.sum(axis=1) / np.linalg.norm(_SEPIA_MATRIX.sum(axis=1))


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def sepia(image: Image.Image) -> Image.Image:
    """Old-photo brown monochrome (the classic sepia matrix)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = np.clip(rgb @ _SEPIA_MATRIX.T * _SEPIA_SCALE + _SEPIA_LIFT, 0, 255)
    return Image.fromarray(out.astype(np.uint8))


def pixel(image: Image.Image, block: int = 4, levels: int = 4) -> Image.Image:
    """Chunky pixel art: 4×4 blocks and a posterised palette."""
    small = image.convert("RGB").resize((image.width // block, image.height // block), Image.BOX)
    arr = np.asarray(small, dtype=np.float32)
    step = 255 / (levels - 1)
    arr = np.round(arr / step) * step
    return Image.fromarray(arr.astype(np.uint8)).resize(image.size, Image.NEAREST)


def stylize(style: str, scene: Scene, size: int = 64) -> Image.Image:
    """Render ``scene`` in ``style``."""
    if style == "sepia":
        return sepia(render(scene, size))
    if style == "pixel":
        return pixel(render(scene, size))
    raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")


def sepia_score(image: Image.Image) -> float:
    """Mean closeness of lit pixels to the sepia tone line (1.0 for a sepia-toned image)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    lit = _luma(rgb) > 40
    if lit.sum() == 0:
        return 0.0
    shifted = rgb[lit] - _SEPIA_LIFT
    along = shifted @ _SEPIA_DIRECTION
    residual = np.linalg.norm(shifted - along[:, None] * _SEPIA_DIRECTION[None], axis=1)
    return float(np.exp(-residual / 20.0).mean())


def pixel_score(image: Image.Image, block: int = 4) -> float:
    """Share of colour change that falls on the 4-pixel block grid (1.0 for perfect pixel art)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    dx = np.abs(np.diff(rgb, axis=1)).sum(-1)
    dy = np.abs(np.diff(rgb, axis=0)).sum(-1)
    on_x = (np.arange(dx.shape[1]) % block) == block - 1
    on_y = (np.arange(dy.shape[0]) % block) == block - 1
    total = dx.sum() + dy.sum()
    if total < 1e-6:
        return 0.0
    return float((dx[:, on_x].sum() + dy[on_y].sum()) / total)


SCORES = {"sepia": sepia_score, "pixel": pixel_score}


def style_score(style: str, image: Image.Image) -> float:
    """How strongly ``image`` shows ``style``, in [0, 1]."""
    if style not in SCORES:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")
    return SCORES[style](image)
