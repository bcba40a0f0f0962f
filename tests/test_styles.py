"""The bundled example style folders are exactly what examples/make_style_folders.py writes."""

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_diffusion.world.scenes import caption, render, sample_scene
from lora_diffusion.world.styles import STYLES, style_score, stylize

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
