"""The built-in base model: loads offline with plain diffusers, tokenizes like SD, draws its world."""

import glob
import os

import pytest
import torch
from PIL import Image

from lora_diffusion.models.builtin import builtin_path
from lora_diffusion.world.checker import read_image
from lora_diffusion.world.quality import held_out_scenes
from lora_diffusion.world.scenes import caption, scene_stream
from lora_diffusion.world.styles import STYLES, style_score


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    os.environ["HF_HUB_OFFLINE"] = "1"
    p = StableDiffusionPipeline.from_pretrained(str(builtin_path()))  # plain call, as a user would
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def base_images(pipe):
    scenes = held_out_scenes(24)
    images = pipe([caption(s) for s in scenes], num_inference_steps=20, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(0), height=64, width=64).images
    return scenes, images


def test_size_on_disk_is_at_most_40_mb():
    total = sum(os.path.getsize(f) for f in glob.glob(str(builtin_path() / "**" / "*"), recursive=True) if os.path.isfile(f))
    assert total <= 40e6, total


def test_tokenizer_is_the_real_clip_bpe(pipe):
    # ids as Stable Diffusion's CLIP tokenizer gives them
    assert pipe.tokenizer("a photo of an astronaut riding a horse").input_ids == [
        49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407
    ]
    assert pipe.tokenizer.model_max_length == 77 and pipe.tokenizer.vocab_size == 49408


def test_generates_on_cpu_offline_and_is_detected_as_builtin(pipe, base_images):
    from lora_diffusion.adapters.apply import components_architecture, pipeline_components

    _, images = base_images
    assert images[0].size == (64, 64)
    assert components_architecture(pipeline_components(pipe)) == "builtin"


def test_generations_follow_their_captions(base_images):
    scenes, images = base_images
    readings = [read_image(im) for im in images]
    colour = sum(r.color == s.color for r, s in zip(readings, scenes)) / len(scenes)
    background = sum(r.background == s.background for r, s in zip(readings, scenes)) / len(scenes)
    assert colour >= 0.85 and background >= 0.85


def test_checker_reads_the_renderer_exactly():
    stream = scene_stream(5)
    for _ in range(100):
        image, _, scene = next(stream)
        reading = read_image(image)
        assert (reading.color, reading.background, reading.shape) == (scene.color, scene.background, scene.shape)


@pytest.mark.parametrize("style", STYLES)
def test_style_scores_separate_example_folders_from_base_generations(style, base_images):
    folder = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "examples", "styles", style, "*.png")))
    assert 16 <= len(folder) <= 40
    assert all(os.path.isfile(f[:-4] + ".txt") for f in folder)
    styled = [style_score(style, Image.open(f)) for f in folder]
    base = [style_score(style, im) for im in base_images[1]]
    assert min(styled) > max(base), (min(styled), max(base))


@pytest.mark.slow
def test_quality_bars_on_200_held_out_captions(pipe):
    from lora_diffusion.world.quality import evaluate

    report = evaluate(pipe, n=200)
    assert report.color >= 0.9 and report.background >= 0.9 and report.shape >= 0.8, str(report)


def test_text_encoder_is_stored_in_the_layout_every_supported_transformers_loads():
    """transformers 4.x finds no weights in transformers 5's unprefixed CLIPTextModel file (a random encoder)."""
    from safetensors import safe_open
    from transformers import CLIPTextModel

    path = builtin_path() / "text_encoder" / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("text_model.") for k in keys)
    _, info = CLIPTextModel.from_pretrained(str(builtin_path()), subfolder="text_encoder", output_loading_info=True)
    assert info["missing_keys"] in ([], set()) and info["unexpected_keys"] in ([], set())
