"""How well a model draws what the world's captions say: colour, background and shape rates."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .checker import read_image
from .scenes import Scene, caption, sample_scene

HELD_OUT_SEED = 2_000_003  # training streams use other seeds


@dataclass
class QualityReport:
    n: int
    color: float
    background: float
    shape: float

    def __str__(self) -> str:
        return (
            f"{self.n} held-out captions: object colour {100 * self.color:.1f}%, "
            f"background {100 * self.background:.1f}%, shape {100 * self.shape:.1f}%"
        )


def held_out_scenes(n: int, seed: int = HELD_OUT_SEED) -> list[Scene]:
    rng = random.Random(seed)
    scenes = []
    for _ in range(n):
        scene = sample_scene(rng)
        scene.show_background = True
        scenes.append(scene)
    return scenes


def evaluate(pipe, n: int = 200, steps: int = 20, guidance: float = 5.0, batch: int = 50, seed: int = 0) -> QualityReport:
    """Generate one image per held-out caption and read each back with the checker."""
    import torch

    scenes = held_out_scenes(n)
    hits = {"color": 0, "background": 0, "shape": 0}
    for start in range(0, n, batch):
        chunk = scenes[start : start + batch]
        generator = torch.Generator(device="cpu").manual_seed(seed + start)
        images = pipe(
            [caption(s) for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
            generator=generator, height=64, width=64,
        ).images
        for scene, image in zip(chunk, images):
            reading = read_image(image)
            hits["color"] += reading.color == scene.color
            hits["background"] += reading.background == scene.background
            hits["shape"] += reading.shape == scene.shape
    return QualityReport(n, hits["color"] / n, hits["background"] / n, hits["shape"] / n)
