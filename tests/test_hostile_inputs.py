"""Inputs a stranger can send cost bounded time and memory (issue 27): PNG text chunks, LyCORIS factor shapes."""

import time

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lora_diffusion.generation.params import GenerationParams, read_png_params, settings_values

# Each of these took the old backtracking parser quadratic time (60k characters: 41 s; 1M: hours).
HOSTILE_TEXTS = {
    "one long settings line": "a" * 1_000_000,
    "spaces before a tag": "p" + " " * 1_000_000 + "<lora:x:1>\nSteps: 3",
    "unclosed tags": "<lora:" * 170_000 + "\nSteps: 3",
    "keys without separators": "Steps: 3, " + "a b: " * 200_000,
    "an unclosed quoted value": 'Model: "' + '\\"' * 500_000,
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_TEXTS))
def test_a_million_hostile_characters_parse_in_linear_time(kind):
    start = time.perf_counter()
    params = GenerationParams.from_text(HOSTILE_TEXTS[kind])
    elapsed = time.perf_counter() - start
    # a guard against the quadratic blow-up (hours), not a speed target: linear parsing takes milliseconds
    assert elapsed < 5, f"{kind}: {elapsed:.1f} s"
    assert params.loras == ([("x", 1.0)] if kind == "spaces before a tag" else [])


def test_settings_line_reads_a1111_values_with_quotes_commas_and_stray_words():
    line = ('Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 64x64, Model: "a, b", '
            'Lora hashes: "x: 1, y: 2", odd/key: 3, Version: v1.6')
    assert settings_values(line) == {
        "Steps": "20", "Sampler": "DPM++ 2M", "CFG scale": "7", "Seed": "1", "Size": "64x64",
        "Model": '"a, b"', "Lora hashes": '"x: 1, y: 2"', "Version": "v1.6"}


def test_tags_and_the_spaces_before_them_leave_the_prompt():
    params = GenerationParams.from_text("a cat  <lora:sepia:0.5>, on a mat <lora:ink:-1>\nSteps: 3")
    assert params.prompt == "a cat, on a mat"
    assert params.loras == [("sepia", 0.5), ("ink", -1.0)]
    assert params.steps == 3


def test_a_model_name_with_quotes_and_commas_round_trips():
    params = GenerationParams(prompt="x", model='my, "odd" \\ model', loras=[("s", 0.25)])
    assert GenerationParams.from_text(params.to_text()) == params


def test_png_info_reads_the_text_chunk_without_decoding_pixels(tmp_path, monkeypatch):
    info = PngInfo()
    info.add_text("parameters", "a red circle <lora:sepia:0.7>\nSteps: 9, Seed: 4, Size: 64x64")
    path = tmp_path / "p.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded to read a text chunk")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    params = read_png_params(path)
    assert (params.prompt, params.loras, params.steps, params.seed) == ("a red circle", [("sepia", 0.7)], 9, 4)


def test_png_without_parameters_is_a_key_error(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(KeyError):
        read_png_params(path)
