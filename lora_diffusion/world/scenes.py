"""A procedural world of captioned images: coloured shapes on coloured backgrounds.

Endless (image, caption) pairs with a closed vocabulary, so a generated image can
be checked against its caption by code (see ``checker.py``). The built-in base
model is trained on this world.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "ring")
OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "orange": (245, 140, 20),
    "yellow": (245, 220, 40),
    "green": (40, 170, 60),
    "blue": (35, 80, 225),
    "purple": (140, 50, 185),
    "pink": (250, 135, 195),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (10, 10, 10),
    "gray": (128, 128, 128),
    "light blue": (165, 205, 245),
    "light green": (185, 230, 170),
    "beige": (235, 220, 185),
}
# object/background pairs too close to tell apart are never generated
_CLASHES = {("white", "white"), ("black", "black"), ("white", "beige"), ("yellow", "beige"), ("white", "light blue")}
POSITIONS: dict[str, tuple[float, float]] = {
    "in the top left corner": (0.27, 0.27),
    "in the top right corner": (0.73, 0.27),
    "in the bottom left corner": (0.27, 0.73),
    "in the bottom right corner": (0.73, 0.73),
    "in the center": (0.5, 0.5),
}
SIZES = {"small": 0.13, "large": 0.3}
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}


@dataclass
class Scene:
    """What is in one image; ``caption()`` and ``render()`` follow from it."""

    shape: str
    color: str
    background: str
    count: int = 1
    size: str | None = None  # None: not said in the caption (medium)
    position: str | None = None  # single objects only
    show_background: bool = True
    objects: list[tuple[float, float, float]] = field(default_factory=list)  # (cx, cy, radius) in [0, 1]


def sample_scene(rng: random.Random) -> Scene:
    """A random scene; object placements are drawn here so rendering is deterministic."""
    while True:
        color, background = rng.choice(list(OBJECT_COLORS)), rng.choice(list(BACKGROUNDS))
        if (color, background) not in _CLASHES:
            break
    scene = Scene(
        shape=rng.choice(SHAPES),
        color=color,
        background=background,
        count=rng.choices([1, 2, 3], weights=[6, 2, 2])[0],
        size=rng.choice([None, "small", "large"]),
    )
    if scene.count > 1 and scene.size == "large":
        scene.size = None
    radius = SIZES.get(scene.size, 0.2) if scene.count == 1 else SIZES.get(scene.size, 0.17)
    radius *= rng.uniform(0.9, 1.1)
    if scene.count == 1:
        if rng.random() < 0.6 and scene.size != "large":
            scene.position = rng.choice(list(POSITIONS))
            cx, cy = POSITIONS[scene.position]
            cx, cy = cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04)
        else:
            cx, cy = rng.uniform(0.5 - 0.1, 0.5 + 0.1), rng.uniform(0.5 - 0.1, 0.5 + 0.1)
        scene.objects = [(cx, cy, radius)]
    else:
        scene.objects = _place(rng, scene.count, radius)
    return scene


def _place(rng: random.Random, count: int, radius: float) -> list[tuple[float, float, float]]:
    for _ in range(200):
        pts = [(rng.uniform(radius + 0.04, 1 - radius - 0.04), rng.uniform(radius + 0.04, 1 - radius - 0.04)) for _ in range(count)]
        if all(math.dist(a, b) > 2 * radius + 0.05 for i, a in enumerate(pts) for b in pts[i + 1 :]):
            return [(x, y, radius) for x, y in pts]
    return [(0.25 + 0.5 * (i % 2), 0.3 + 0.4 * (i // 2), radius * 0.8) for i in range(count)]


def caption(scene: Scene) -> str:
    """Plain English: "two small red circles on a light blue background"."""
    noun = scene.shape + ("s" if scene.count > 1 else "")
    words = [COUNT_WORDS[scene.count]]
    if scene.size:
        words.append(scene.size)
    words += [scene.color, noun]
    if scene.count == 1 and words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    text = " ".join(words)
    if scene.position:
        text += " " + scene.position
    if scene.show_background:
        text += f" on a {scene.background} background"
    return text


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of the polygonal shapes, centred at (cx, cy) with outer radius r."""
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * 0.15 + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.42
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    raise ValueError(shape)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill, background) -> None:
    """Draw one shape in pixel coordinates."""
    if shape in ("circle", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        if shape == "ring":
            h = r * 0.55
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=background)
    else:
        draw.polygon(shape_polygon(shape, cx, cy, r), fill=fill)


def render(scene: Scene, size: int = 64, supersample: int = 4) -> Image.Image:
    """The scene as an RGB image, anti-aliased by drawing large and shrinking."""
    big = size * supersample
    background = BACKGROUNDS[scene.background]
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    for cx, cy, r in scene.objects:
        draw_shape(draw, scene.shape, cx * big, cy * big, r * big, OBJECT_COLORS[scene.color], background)
    return image.resize((size, size), Image.LANCZOS)


def scene_stream(seed: int, size: int = 64, background_phrase_rate: float = 0.9):
    """Endless ``(image, caption, scene)`` triples from one seed (reproducible)."""
    rng = random.Random(seed)
    while True:
        scene = sample_scene(rng)
        scene.show_background = rng.random() < background_phrase_rate
        yield render(scene, size), caption(scene), scene
