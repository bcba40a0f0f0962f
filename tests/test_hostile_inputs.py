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


def _huge_lokr(path, module="lora_unet_conv_out", side=12000):
    """A 48 KB LoKr whose factors describe a side×side weight change (576 MB in fp32 at 12000)."""
    import torch
    from safetensors.torch import save_file

    save_file({f"{module}.lokr_w1": torch.ones(1, 1), f"{module}.lokr_w2_a": torch.ones(side, 1),
               f"{module}.lokr_w2_b": torch.ones(1, side), f"{module}.alpha": torch.tensor(1.0)}, str(path))
    return path


@pytest.fixture
def no_full_kron(monkeypatch):
    """Fail the test if any LoKr ΔW is built for real (only shape-only meta products are allowed)."""
    import torch

    real_kron = torch.kron

    def guarded(a, b, *args, **kwargs):
        assert a.is_meta and b.is_meta, "a LoKr weight change was built before its shape was checked"
        return real_kron(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "kron", guarded)


def test_a_lokr_too_big_for_its_layer_is_refused_before_its_delta_is_built(tmp_path, no_full_kron):
    from lora_diffusion import load_adapter, lora_layers, pipeline_components
    from lora_diffusion.errors import UserError
    from lora_diffusion.models.tiny import tiny_pipeline

    path = _huge_lokr(tmp_path / "lokr12k.safetensors")
    pipe = tiny_pipeline("sd1")
    with pytest.raises(UserError, match=r"module lora_unet_conv_out: its lokr factors make a weight change of shape "
                                        r"\(12000, 12000\) \(144M values\)"):
        load_adapter(path, pipeline_components(pipe))
    assert not lora_layers(pipe.unet)


def test_a_lokr_that_does_not_match_its_layer_is_refused_by_shape_alone(tmp_path, no_full_kron):
    from lora_diffusion import load_adapter, pipeline_components
    from lora_diffusion.errors import UserError
    from lora_diffusion.models.tiny import tiny_pipeline

    path = _huge_lokr(tmp_path / "lokr300.safetensors", side=300)
    with pytest.raises(UserError, match=r"module lora_unet_conv_out has a lokr weight change of shape \(300, 300\) "
                                        r"but the base layer is \(4, 32, 3, 3\)"):
        load_adapter(path, pipeline_components(tiny_pipeline("sd1")))


@pytest.mark.parametrize("command", ["resize", "merge"])
def test_resize_and_merge_refuse_an_oversized_lokr_in_one_line(tmp_path, capsys, command, no_full_kron):
    from lora_diffusion.cli.main import main

    path = _huge_lokr(tmp_path / "lokr12k.safetensors")
    out = tmp_path / "out.safetensors"
    args = [str(path), "--rank", "2"] if command == "resize" else [f"{path}:1", f"{path}:0.5"]
    assert main([command, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "its lokr factors make a weight change of shape (12000, 12000)" in err and "\n" not in err
    assert not out.exists()
