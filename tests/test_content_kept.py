"""The content measures of a style LoRA's images: shape, place and variety against the restyled base."""

import random

from PIL import Image

from lora_diffusion.world.content import content_kept, layout_mask, same_place
from lora_diffusion.world.scenes import Scene, render, sample_scene
from lora_diffusion.world.styles import stylize


def _scenes(n=12, seed=4):
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(n)]


def test_a_perfect_colour_style_keeps_everything():
    scenes = _scenes()
    base = [render(s) for s in scenes]
    kept = content_kept("sepia", scenes, base, [stylize("sepia", s) for s in scenes])
    assert kept.position == 1.0
    assert kept.variety == 1.0
    assert kept.shape == kept.shape_possible


def test_the_same_picture_for_every_prompt_is_caught():
    scenes = _scenes()
    base = [render(s) for s in scenes]
    one = stylize("warm", scenes[0])
    kept = content_kept("warm", scenes, base, [one] * len(scenes))
    assert kept.variety == 0.0
    assert kept.position < 0.5


def test_an_object_moved_by_a_quarter_of_the_side_is_not_in_place():
    def circle_at(x, colour="red", background="white"):
        return render(Scene("circle", colour, background, objects=[(x, 0.5, 0.15)]))

    assert same_place(circle_at(0.3), circle_at(0.33))
    assert not same_place(circle_at(0.3), circle_at(0.55))
    # a low-contrast grade of the same picture still shows the object in place; an outline covers its disc
    assert same_place(circle_at(0.3), stylize("sepia", Scene("circle", "yellow", "white", objects=[(0.3, 0.5, 0.15)])))
    assert same_place(circle_at(0.3), stylize("ink", Scene("circle", "red", "white", objects=[(0.3, 0.5, 0.15)])))
    # nothing drawn is nowhere
    assert not layout_mask(Image.new("RGB", (64, 64), (245, 245, 245))).any()
    assert not same_place(Image.new("RGB", (64, 64), (245, 245, 245)), circle_at(0.3))


def test_a_blank_styled_image_keeps_no_shape():
    scenes = _scenes(6)
    base = [render(s) for s in scenes]
    blank = Image.new("RGB", (64, 64), (120, 16, 104))
    kept = content_kept("duotone", scenes, base, [blank] * 6)
    assert (kept.shape, kept.position, kept.variety) == (0.0, 0.0, 0.0)
    assert kept.shape_possible > 0.5
