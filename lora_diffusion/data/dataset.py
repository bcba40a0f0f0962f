"""Examples → training batches: captions processed, images resized/cropped/flipped, bucketed by shape.

Every random choice is a pure function of (seed, epoch, index), so a resumed run
sees exactly the batches an uninterrupted one would, with no RNG state to save.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from .folder import Example
from .images import BadImage, displayed_size, open_rgb
from .masks import open_mask


@dataclass(frozen=True)
class Geometry:
    """Where a training image came from, as SDXL's size conditioning reads it: sizes are
    (height, width); the crop offset (top, left) is in the resized image."""

    original: tuple[int, int]
    crop_top_left: tuple[int, int]
    target: tuple[int, int]

    def time_ids(self) -> list[int]:
        """SDXL's ``add_time_ids`` row: original size, crop top-left, target size."""
        return [*self.original, *self.crop_top_left, *self.target]


@dataclass(frozen=True)
class Placement:
    """How one image becomes one sample: resized to ``resized`` (w, h), cropped at (left, top), flipped or not."""

    resized: tuple[int, int]
    left: int
    top: int
    flipped: bool


@dataclass
class DataSummary:
    images: int
    examples: int  # after repeats
    skipped: list[tuple[str, str]] = field(default_factory=list)
    buckets: dict[str, int] = field(default_factory=dict)

    def as_metadata(self) -> dict:
        return {"images": self.images, "examples_with_repeats": self.examples, "skipped": len(self.skipped), "buckets": self.buckets}


def _rng(seed: int, *keys: int) -> random.Random:
    value = seed
    for key in keys:
        value = (value * 1_000_003 + key) % (2**61 - 1)
    return random.Random(value)


def process_caption(text: str, rng: random.Random, shuffle: bool, keep_tokens: int, dropout: float) -> str:
    """kohya-style: drop the caption with probability ``dropout``; shuffle comma tags after the first ``keep_tokens``."""
    if dropout and rng.random() < dropout:
        return ""
    if shuffle:
        tags = [t.strip() for t in text.split(",") if t.strip()]
        head, tail = tags[:keep_tokens], tags[keep_tokens:]
        rng.shuffle(tail)
        text = ", ".join(head + tail)
    return text


def bucket_sizes(resolution: int, step: int = 64, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) pairs of about resolution² pixels, multiples of ``step`` (of 8 for small sizes)."""
    step = min(step, max(8, resolution // 8))
    area = resolution * resolution
    sizes = set()
    width = step
    while width <= resolution * max_ratio:
        height = int(area / width) // step * step
        if height >= step and 1 / max_ratio <= width / height <= max_ratio:
            sizes.add((width, height))
        width += step
    sizes.add((resolution, resolution))
    return sorted(sizes)


def require_examples(examples: list[Example], skipped=None) -> None:
    """Raise the one-line error for a folder with no usable image, naming the first reasons."""
    if not examples:
        reasons = "; ".join(f"{p}: {r}" for p, r in (skipped or [])[:3])
        raise UserError("no usable images in the data folder" + (f" ({reasons})" if reasons else "") + "; add images with captions")


class TrainingData:
    """The expanded example list and how to turn one example into a training sample."""

    def __init__(self, examples: list[Example], resolution: int, *, crop: str = "center", flip: bool = False,
                 bucketing: bool = False, caption_shuffle: bool = False, keep_tokens: int = 1,
                 caption_dropout: float = 0.0, seed: int = 0, skipped=None, masked: bool = False,
                 alpha_masks: bool = False, subsets: list | None = None):
        require_examples(examples, skipped)
        self.items = [e for e in examples for _ in range(e.repeats)]
        self.resolution, self.crop, self.flip, self.seed = resolution, crop, flip, seed
        self.caption_shuffle, self.keep_tokens, self.caption_dropout = caption_shuffle, keep_tokens, caption_dropout
        self.masked, self.alpha_masks = masked, alpha_masks  # masked loss; alpha channels as masks too
        self.subsets = subsets or []  # a dataset config's Subset list: per-subset caption/flip options, reg sets
        self.flip = flip or any(s.flip for s in self.subsets)  # any image may be flipped: both are cached
        self._flip_default = flip
        self.bad: dict[str, str] = {}
        self._image_sizes: dict[str, tuple[int, int]] = {}  # path -> (w, h), from headers
        self.skipped = list(skipped or [])
        self.sizes = self._assign_buckets() if bucketing else [(resolution, resolution)] * len(self.items)
        counts: dict[str, int] = {}
        for w, h in self.sizes:
            counts[f"{w}x{h}"] = counts.get(f"{w}x{h}", 0) + 1
        self.summary = DataSummary(len(examples), len(self.items), self.skipped, counts)

    @property
    def deterministic(self) -> bool:
        """True when an example gives one of at most two fixed images (latents may be cached): centre
        crops, each either plain or, with ``flip``, mirrored (both orientations are cached, as kohya does,
        keyed by (index, flipped))."""
        return self.crop == "center"


    @property
    def fixed_captions(self) -> bool:
        return not any(self._option(i, "caption_shuffle", self.caption_shuffle) for i in self._subset_heads())

    def _subset_heads(self) -> list[int]:
        """One item index per subset present (per-subset options are the same within a subset)."""
        heads: dict[int, int] = {}
        for i, e in enumerate(self.items):
            heads.setdefault(e.subset, i)
        return list(heads.values())

    def _option(self, index: int, name: str, default):
        """Item ``index``'s subset's value of ``name``, or ``default`` (the run's) where it sets none."""
        if not self.subsets:
            return default
        value = getattr(self.subsets[self.items[index].subset], name)
        return default if value is None else value

    def is_reg(self, index: int) -> bool:
        """Whether item ``index`` is a regularization (class) image."""
        return bool(self.subsets) and self.subsets[self.items[index].subset].is_reg

    @property
    def has_reg(self) -> bool:
        """Whether any subset holds regularization images (asked per batch: one look per subset, not per image)."""
        return any(s.is_reg for s in self.subsets)

    def possible_captions(self) -> list[str]:
        """Every caption a step can see when captions are fixed: each example's, and the empty one
        that caption dropout substitutes."""
        captions = list(dict.fromkeys(e.caption for e in self.items))
        dropout = any(self._option(i, "caption_dropout", self.caption_dropout) for i in self._subset_heads())
        return captions + ([""] if dropout and "" not in captions else [])

    def _assign_buckets(self) -> list[tuple[int, int]]:
        sizes = bucket_sizes(self.resolution)
        out = []
        for index in range(len(self.items)):
            width, height = self.image_size(index)
            ratio = width / height
            out.append(min(sizes, key=lambda s: abs(np.log(s[0] / s[1]) - np.log(ratio))))
        return out

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) of the example's file, read from its header (no decode); the training
        size for a file whose header cannot be read (it is reported when the image is used)."""
        path = self.items[index].path
        if path not in self._image_sizes:
            try:
                self._image_sizes[path] = displayed_size(path)
            except Exception:  # noqa: BLE001
                self._image_sizes[path] = (self.resolution, self.resolution)
        return self._image_sizes[path]

    def placement(self, index: int, epoch: int, image_size: tuple[int, int] | None = None) -> Placement:
        """Resize to cover the bucket, then crop (centre or seeded random) and maybe flip: a pure
        function of (seed, epoch, index) and the image size, so pixels and size conditioning agree."""
        width, height = self.sizes[index]
        image_w, image_h = image_size or self.image_size(index)
        scale = max(width / image_w, height / image_h)
        new = (max(width, round(image_w * scale)), max(height, round(image_h * scale)))
        rng = _rng(self.seed, 71, epoch, index)
        if self.crop == "random":
            left, top = rng.randint(0, new[0] - width), rng.randint(0, new[1] - height)
        else:
            left, top = (new[0] - width) // 2, (new[1] - height) // 2
        flipped = self._option(index, "flip", self._flip_default) and rng.random() < 0.5
        return Placement(new, left, top, flipped)

    def geometry(self, index: int, epoch: int, place: Placement | None = None) -> Geometry:
        """The sample's SDXL size conditioning (from ``place`` when the caller has it already); a flipped
        crop's offset is mirrored like its pixels."""
        width, height = self.sizes[index]
        image_w, image_h = self.image_size(index)
        place = place or self.placement(index, epoch, (image_w, image_h))
        left = place.resized[0] - width - place.left if place.flipped else place.left
        return Geometry((image_h, image_w), (place.top, left), (height, width))

    def batches(self, epoch: int, batch_size: int) -> list[list[int]]:
        """The epoch's batches of item indices: shuffled, each batch within one bucket."""
        order = list(range(len(self.items)))
        _rng(self.seed, 17, epoch).shuffle(order)
        groups: dict[tuple[int, int], list[int]] = {}
        for index in order:
            groups.setdefault(self.sizes[index], []).append(index)
        batches = [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
        _rng(self.seed, 29, epoch).shuffle(batches)
        return batches

    def caption(self, index: int, epoch: int) -> str:
        rng = _rng(self.seed, 43, epoch, index)
        return process_caption(self.items[index].caption, rng, self._option(index, "caption_shuffle", self.caption_shuffle),
                               self._option(index, "keep_tokens", self.keep_tokens),
                               self._option(index, "caption_dropout", self.caption_dropout))

    def pixels(self, index: int, epoch: int, flipped: bool | None = None) -> torch.Tensor:
        """The example's image, resized to cover its bucket, cropped and maybe flipped; 3×H×W in [-1, 1].
        ``flipped`` overrides the epoch's flip (to cache both orientations)."""
        image = self._open(index)
        image = self._place(image, index, epoch, flipped)
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def mask(self, index: int, epoch: int, flipped: bool | None = None) -> torch.Tensor:
        """The example's loss mask, placed exactly as its pixels (resize, crop, flip); 1×H×W in [0, 1], all ones
        for an image without a mask."""
        path = self.items[index].path
        try:
            size = displayed_size(path)
            mask = open_mask(path, size, self.alpha_masks)
        except BadImage as error:
            raise UserError(f"{path}: {error}; fix or remove the mask") from None
        if mask is None:
            width, height = self.sizes[index]
            return torch.ones(1, height, width)
        mask = self._place(mask, index, epoch, flipped)
        return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None].contiguous()

    def _place(self, image: Image.Image, index: int, epoch: int, flipped: bool | None) -> Image.Image:
        width, height = self.sizes[index]
        place = self.placement(index, epoch, image.size)
        image = image.resize(place.resized, Image.BICUBIC)
        image = image.crop((place.left, place.top, place.left + width, place.top + height))
        if place.flipped if flipped is None else flipped:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return image

    def _open(self, index: int) -> Image.Image:
        path = self.items[index].path
        try:
            return open_rgb(path)
        except BadImage as error:
            if path not in self.bad:
                self.bad[path] = str(error)
                self.skipped.append((path, str(error)))
                print(f"warning: skipping {path}: {error}", file=sys.stderr)
            return self._substitute(index)

    def _substitute(self, index: int) -> Image.Image:
        # a broken file is replaced by the next good one, so batches keep their size
        for offset in range(1, len(self.items)):
            other = (index + offset) % len(self.items)
            if self.items[other].path not in self.bad and self.sizes[other] == self.sizes[index]:
                try:
                    return open_rgb(self.items[other].path)
                except BadImage as error:
                    self.bad[self.items[other].path] = str(error)
                    self.skipped.append((self.items[other].path, str(error)))
        raise UserError("no usable images left: every image in the data folder failed to open; check the files")
