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

STYLES = ("sepia", "pixel", "cyanotype", "ink")
# looks kept out of examples/ and out of every tuning run: the style benchmark trains them only to check that
# derived defaults chosen on the example folders carry over to styles nobody tuned on
HELD_OUT_STYLES = ("duotone", "warm")
ALL_STYLES = STYLES + HELD_OUT_STYLES
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


# cyanotype: every pixel on the segment from Prussian-blue shadow to pale-blue paper
_CYAN_DARK = np.array([18, 44, 96], dtype=np.float32)
_CYAN_LIGHT = np.array([214, 232, 246], dtype=np.float32)
_CYAN_DIRECTION = (_CYAN_LIGHT - _CYAN_DARK) / np.linalg.norm(_CYAN_LIGHT - _CYAN_DARK)
_PAPER = (246, 242, 230)
_INK = (28, 26, 34)


def cyanotype(image: Image.Image) -> Image.Image:
    """A colour grade: blue-print monochrome, brightness mapped onto Prussian blue → pale blue."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    t = (_luma(rgb) / 255.0)[..., None]
    out = _CYAN_DARK + t * (_CYAN_LIGHT - _CYAN_DARK)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def ink(scene: Scene, size: int = 64) -> Image.Image:
    """A line look: the outline of every shape in dark ink on light paper, no fills.

    Drawn from the scene itself (not edge-detected), so small rings keep their hole and the
    strokes are 2 pixels wide: thin enough for line art, wide enough for a 4x-downsampling VAE.
    """
    from PIL import ImageDraw, ImageFilter

    from .scenes import draw_shape

    big = size * 4
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    for cx, cy, r in scene.objects:
        draw_shape(draw, scene.shape, cx * big, cy * big, r * big, 255, 0)
    band = np.asarray(mask.filter(ImageFilter.MaxFilter(9)), np.int16) - np.asarray(mask.filter(ImageFilter.MinFilter(9)), np.int16)
    strokes = Image.fromarray((band > 0).astype(np.uint8) * 255).resize((size, size), Image.BOX)
    out = Image.new("RGB", (size, size), _PAPER)
    out.paste(Image.new("RGB", (size, size), _INK), mask=strokes.point(lambda v: 255 if v > 96 else 0))
    return out


# duotone: brightness onto deep magenta → teal, darkened towards the corners (a vignette gentle enough that the
# checker still finds the background at the border)
_DUO_DARK = np.array([120, 16, 104], dtype=np.float32)
_DUO_LIGHT = np.array([70, 214, 200], dtype=np.float32)
_DUO_PLANE = np.cross(_DUO_DARK, _DUO_LIGHT) / np.linalg.norm(np.cross(_DUO_DARK, _DUO_LIGHT))


def duotone(image: Image.Image) -> Image.Image:
    """A magenta/teal duotone with a dark vignette (every pixel a darkened mix of the two inks)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    t = (_luma(rgb) / 255.0)[..., None]
    h, w = t.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx + 0.5) / w - 0.5) ** 2 + ((yy + 0.5) / h - 0.5) ** 2
    vignette = np.clip(1.0 - 0.5 * r2, 0.75, 1.0)[..., None]
    out = (_DUO_DARK + t * (_DUO_LIGHT - _DUO_DARK)) * vignette
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


# warm: four brightness levels, each one colour of a warm palette (a posterised print)
_WARM_PALETTE = np.array([[64, 22, 12], [168, 64, 24], [236, 150, 52], [255, 228, 170]], dtype=np.float32)


def warm(image: Image.Image) -> Image.Image:
    """A warm posterised palette: brightness in four flat levels, brown → rust → amber → cream."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    level = np.clip((_luma(rgb) / 255.0 * 4).astype(int), 0, 3)
    return Image.fromarray(_WARM_PALETTE[level].astype(np.uint8))


# each look from a rendered image, except ink, which is drawn from the scene's geometry
LOOKS = {"sepia": sepia, "pixel": pixel, "cyanotype": cyanotype, "duotone": duotone, "warm": warm}


def ink_from_image(image: Image.Image) -> Image.Image:
    """The ink look traced from a drawn image: outlines of everything the checker sees as an object."""
    from PIL import ImageFilter

    from .checker import object_mask

    mask = object_mask(image, largest=False)
    size = image.size
    if mask is None:
        return Image.new("RGB", size, _PAPER)
    objects = Image.fromarray(mask.astype(np.uint8) * 255)
    band = np.asarray(objects.filter(ImageFilter.MaxFilter(3)), np.int16) - np.asarray(objects.filter(ImageFilter.MinFilter(3)), np.int16)
    out = Image.new("RGB", size, _PAPER)
    out.paste(Image.new("RGB", size, _INK), mask=Image.fromarray(((band > 0) * 255).astype(np.uint8)))
    return out


def restyle(style: str, image: Image.Image) -> Image.Image:
    """``style`` applied to an already drawn image: what a perfect style LoRA would make of the base's picture."""
    if style == "ink":
        return ink_from_image(image)
    if style not in LOOKS:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(ALL_STYLES)}")
    return LOOKS[style](image)


def stylize(style: str, scene: Scene, size: int = 64) -> Image.Image:
    """Render ``scene`` in ``style``."""
    if style == "ink":
        return ink(scene, size)
    if style not in LOOKS:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(ALL_STYLES)}")
    return LOOKS[style](render(scene, size))


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


def cyanotype_score(image: Image.Image) -> float:
    """Mean closeness of every pixel to the cyanotype tone segment (1.0 for a cyanotype)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3) - _CYAN_DARK
    along = np.clip(rgb @ _CYAN_DIRECTION, 0, np.linalg.norm(_CYAN_LIGHT - _CYAN_DARK))
    residual = np.linalg.norm(rgb - along[:, None] * _CYAN_DIRECTION[None], axis=1)
    return float(np.exp(-residual / 20.0).mean())


def ink_score(image: Image.Image) -> float:
    """Paper-and-ink share times stroke share (1.0 for line art on paper).

    The first factor is the share of pixels that are light paper or dark ink (colour fills count
    against it); the second the share of ink within 1 pixel of paper, so solid dark shapes, thick
    rings and blank paper score low: only thin outlines on paper score high.
    """
    from PIL import ImageFilter

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    luma, chroma = _luma(rgb), rgb.max(-1) - rgb.min(-1)
    paper = (luma > 185) & (chroma < 45)
    dark = (luma < 90) & (chroma < 45)
    if dark.sum() == 0:
        return 0.0
    near_paper = np.asarray(Image.fromarray((paper * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(3))) > 0
    strokes = (dark & near_paper).sum() / dark.sum()
    return float((paper | dark).mean() * strokes)


def duotone_score(image: Image.Image) -> float:
    """Mean closeness of lit pixels to the plane of darkened magenta/teal mixes (1.0 for the duotone)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    lit = rgb[rgb.max(-1) > 30]
    if len(lit) == 0:
        return 0.0
    return float(np.exp(-np.abs(lit @ _DUO_PLANE) / 20.0).mean())


def warm_score(image: Image.Image) -> float:
    """Mean closeness of every pixel to its nearest warm-palette colour (1.0 for the posterised print)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 1, 3)
    nearest = np.linalg.norm(rgb - _WARM_PALETTE[None], axis=-1).min(-1)
    return float(np.exp(-nearest / 20.0).mean())


SCORES = {"sepia": sepia_score, "pixel": pixel_score, "cyanotype": cyanotype_score, "ink": ink_score,
          "duotone": duotone_score, "warm": warm_score}


def style_score(style: str, image: Image.Image) -> float:
    """How strongly ``image`` shows ``style``, in [0, 1]."""
    if style not in SCORES:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(ALL_STYLES)}")
    return SCORES[style](image)
