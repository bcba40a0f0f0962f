"""Read a generated image back into the world's vocabulary: background, colour, shape.

Background: the median of the border pixels, nearest background colour. Object:
pixels far from the background; its colour is the median of their interior,
nearest object colour. Shape: the largest object blob, cropped and scaled, is
compared (IoU) with the renderer's own silhouette of every shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .scenes import BACKGROUNDS, OBJECT_COLORS, SHAPES, draw_shape

_TEMPLATE = 24


@dataclass(frozen=True)
class Reading:
    background: str
    color: str | None
    shape: str | None


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    dists = [np.linalg.norm(rgb - np.array(palette[n], dtype=np.float32)) for n in names]
    return names[int(np.argmin(dists))]


@lru_cache(maxsize=1)
def _templates() -> dict[str, np.ndarray]:
    out = {}
    for shape in SHAPES:
        big = 4 * _TEMPLATE
        image = Image.new("L", (big, big), 0)
        draw_shape(ImageDraw.Draw(image), shape, big / 2, big / 2, big / 2 - 2, 255, 0)
        out[shape] = _normalise(np.asarray(image) > 127)
    return out


def _normalise(mask: np.ndarray) -> np.ndarray:
    """Crop to the bounding box and scale to a square template."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    image = Image.fromarray((crop * 255).astype(np.uint8)).resize((_TEMPLATE, _TEMPLATE), Image.BILINEAR)
    return np.asarray(image) > 127


def _flood(free: np.ndarray, seeds: list[tuple[int, int]]) -> np.ndarray:
    """Pixels of ``free`` 4-connected to any seed (plain flood fill; images are small)."""
    h, w = free.shape
    reached = np.zeros_like(free, dtype=bool)
    stack = [(y, x) for y, x in seeds if free[y, x]]
    for y, x in stack:
        reached[y, x] = True
    while stack:
        y, x = stack.pop()
        for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
            if 0 <= ny < h and 0 <= nx < w and free[ny, nx] and not reached[ny, nx]:
                reached[ny, nx] = True
                stack.append((ny, nx))
    return reached


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The 4-connected component of ``mask`` with the most pixels."""
    seen = np.zeros_like(mask, dtype=bool)
    best = np.zeros_like(mask, dtype=bool)
    for y, x in zip(*np.nonzero(mask)):
        if not seen[y, x]:
            component = _flood(mask, [(y, x)])
            seen |= component
            if component.sum() > best.sum():
                best = component
    return best


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Pixels not reachable from the border through background count as inside."""
    h, w = mask.shape
    border = [(y, x) for y in range(h) for x in (0, w - 1)] + [(y, x) for x in range(w) for y in (0, h - 1)]
    return ~_flood(~mask, border)


def background_distance(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The border's median colour, and each pixel's distance from it."""
    border = np.concatenate([rgb[:2].reshape(-1, 3), rgb[-2:].reshape(-1, 3), rgb[:, :2].reshape(-1, 3), rgb[:, -2:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    return bg_rgb, np.linalg.norm(rgb - bg_rgb, axis=-1)


def object_mask(image: Image.Image, largest: bool = True) -> np.ndarray | None:
    """Object pixels (far from the border's colour): the largest blob, or all of them; None where there are none."""
    _, distance = background_distance(np.asarray(image.convert("RGB"), dtype=np.float32))
    mask = distance > 60
    if mask.sum() < 6:
        return None
    return _largest_component(mask) if largest else mask


def read_image(image: Image.Image) -> Reading:
    """What the image shows, in the world's words (None where nothing is found)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    bg_rgb, distance = background_distance(rgb)
    background = _nearest(bg_rgb, BACKGROUNDS)
    mask = distance > 60
    if mask.sum() < 6:
        return Reading(background, None, None)
    blob = _largest_component(mask)
    # interior pixels only: edges are blended with the background by anti-aliasing
    strong = blob & (distance > np.percentile(distance[blob], 40))
    if not strong.any():
        strong = blob
    color = _nearest(np.median(rgb[strong], axis=0), OBJECT_COLORS)
    if blob.sum() < 6:
        return Reading(background, color, None)
    filled_mask = fill_holes(blob)
    # a real hole (not one stray pixel) means the outline is compared as drawn, hole included
    has_hole = (filled_mask & ~blob).sum() >= max(2, 0.08 * filled_mask.sum())
    target = _normalise(blob if has_hole else filled_mask)
    scores = {
        shape: (template & target).sum() / max(1, (template | target).sum())
        for shape, template in _templates().items()
    }
    if not has_hole:
        scores["ring"] = 0.0
    shape = max(scores, key=scores.get)
    return Reading(background, color, shape)
