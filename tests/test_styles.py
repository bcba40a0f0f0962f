"""The bundled example style folders are exactly what examples/make_style_folders.py writes."""

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_diffusion.world.scenes import caption, render, sample_scene
from lora_diffusion.world.styles import STYLES, restyle, style_score, stylize

FOLDERS = Path(__file__).resolve().parents[1] / "examples" / "styles"


@pytest.mark.parametrize("style", STYLES)
def test_example_folder_is_reproducible(style):
    rng = random.Random(9000 + STYLES.index(style))  # the script's seeds
    files = sorted(FOLDERS.joinpath(style).glob("*.png"))
    assert len(files) == 24
    for path in files:
        scene = sample_scene(rng)
        assert np.array_equal(np.asarray(stylize(style, scene)), np.asarray(Image.open(path).convert("RGB"))), path
        assert path.with_suffix(".txt").read_text() == caption(scene) + "\n"


def test_new_looks_score_their_own_style_and_not_the_plain_render():
    scene = sample_scene(random.Random(3))
    plain = render(scene)
    assert style_score("cyanotype", stylize("cyanotype", scene)) > 0.95 > 0.5 > style_score("cyanotype", plain)
    assert style_score("ink", stylize("ink", scene)) > 0.7 > 0.3 > style_score("ink", plain)
    # blank paper is not line art
    assert style_score("ink", Image.new("RGB", (64, 64), (246, 242, 230))) == 0.0


@pytest.mark.parametrize("style", ["duotone", "warm"])
def test_held_out_looks_score_their_own_style_and_not_the_plain_render(style):
    rng = random.Random(5)
    scenes = [sample_scene(rng) for _ in range(8)]
    assert min(style_score(style, stylize(style, s)) for s in scenes) > 0.9
    assert max(style_score(style, render(s)) for s in scenes) < 0.5
    # the two held-out looks are told apart
    other = "warm" if style == "duotone" else "duotone"
    assert max(style_score(other, stylize(style, s)) for s in scenes) < 0.5


def test_restyle_matches_stylize_for_image_looks():
    scene = sample_scene(random.Random(11))
    for style in ("sepia", "pixel", "cyanotype", "duotone", "warm"):
        assert np.array_equal(np.asarray(restyle(style, render(scene))), np.asarray(stylize(style, scene)))
    with pytest.raises(ValueError, match="unknown style 'oil'; choose from sepia, pixel, cyanotype, ink, duotone, warm"):
        restyle("oil", render(scene))
