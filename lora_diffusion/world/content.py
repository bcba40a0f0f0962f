"""Whether a styled image still shows the scene the base drew: the prompted shape, in the same place, varied.

A style LoRA should repaint the scene, not replace it. Each image generated at LoRA weight w is compared with
the base's image of the same prompt and seed (weight 0) with the style applied to it by code
(``styles.restyle``): what a perfect style LoRA would draw. Both are read back with the world's checker, so a
look that hides part of a scene from the checker (a monochrome grade merging a yellow object into a white
background) counts against neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .checker import background_distance, fill_holes, read_image
from .scenes import Scene
from .styles import restyle

# objects count as kept in place when their masks overlap this much (intersection over union)
PLACE_IOU = 0.5


@dataclass(frozen=True)
class ContentKept:
    """Shares in [0, 1] over a set of prompts.

    ``shape``: the checker reads the prompted shape; ``shape_possible``: the same for the base's images with the
    style applied by code (the most a style LoRA can reach); ``position``: the objects cover the pixels they cover in
    the restyled base image (over the prompts where it shows any); ``variety``: mean distance between the prompts' images relative to the restyled
    base images' (1.0: as varied; near 0: every prompt gives the same picture).
    """

    shape: float
    shape_possible: float
    position: float
    variety: float

    def __str__(self) -> str:
        return (f"prompted shape read in {100 * self.shape:.0f}% (restyled base: {100 * self.shape_possible:.0f}%), "
                f"objects where the base drew them in {100 * self.position:.0f}%, variety {self.variety:.2f}× the base's")


def layout_mask(image: Image.Image) -> np.ndarray:
    """Where the objects are, whatever their colours: pixels that stand out from the border's colour.

    The cut is Otsu's threshold on the distance from the border's median colour (at least 20 of 441), so a
    style that lowers the contrast between objects and background (a monochrome grade) still shows its
    objects; outlines are filled, so line art and filled shapes compare by the area they cover.
    """
    _, distance = background_distance(np.asarray(image.convert("RGB"), dtype=np.float32))
    counts, edges = np.histogram(distance, bins=64, range=(0.0, max(float(distance.max()), 1.0)))
    centres = (edges[:-1] + edges[1:]) / 2
    below, total = np.cumsum(counts), counts.sum()
    mean_below = np.cumsum(counts * centres) / np.maximum(below, 1)
    mean_above = (np.sum(counts * centres) - np.cumsum(counts * centres)) / np.maximum(total - below, 1)
    between = below * (total - below) * (mean_below - mean_above) ** 2
    threshold = max(20.0, float(edges[int(np.argmax(between)) + 1]))
    return fill_holes(distance > threshold)


def same_place(a: Image.Image | np.ndarray, b: Image.Image) -> bool:
    """The two images' objects cover mostly the same pixels (IoU of their layout masks ≥ ``PLACE_IOU``);
    ``a`` may be given as its layout mask already."""
    ma = a if isinstance(a, np.ndarray) else layout_mask(a)
    mb = layout_mask(b)
    union = (ma | mb).sum()
    return bool(union) and (ma & mb).sum() / union >= PLACE_IOU


def variety(images: list[Image.Image]) -> float:
    """Mean pixel distance between consecutive images (0 when every prompt gives the same picture)."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    if len(arrays) < 2:
        return 0.0
    return float(np.mean([np.abs(a - b).mean() for a, b in zip(arrays, arrays[1:])]))


def content_kept(style: str, scenes: list[Scene], base: list[Image.Image], styled: list[Image.Image]) -> ContentKept:
    """How much of each base image's scene survives in the ``style`` image of the same prompt and seed."""
    expected = [restyle(style, im) for im in base]
    shape = np.mean([read_image(im).shape == scene.shape for scene, im in zip(scenes, styled)])
    possible = np.mean([read_image(im).shape == scene.shape for scene, im in zip(scenes, expected)])
    # a restyled base image that shows the checker no object says nothing about where the objects went
    masks = [layout_mask(want) for want in expected]
    visible = [(mask, got) for mask, got in zip(masks, styled) if mask.any()]
    position = np.mean([same_place(mask, got) for mask, got in visible]) if visible else 0.0
    reference = variety(expected)
    return ContentKept(float(shape), float(possible), float(position), variety(styled) / reference if reference else 0.0)
