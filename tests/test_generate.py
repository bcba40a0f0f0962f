"""Blending several LoRAs at generation time: exact, linear, order-free, reproducible, compatible."""

import numpy as np
import pytest
import torch

from conftest import diffusers_load_lora, randomize_lora
from lora_diffusion import LoraConfig, UserError, inject_adapter, lora_layers, pipeline_components, read_adapter, save_adapter
from lora_diffusion.cli.main import main
from lora_diffusion.generation.engine import GenerationEngine, LoraChoice
from lora_diffusion.generation.params import GenerationParams, read_png_params


@pytest.fixture(scope="module")
def two_loras(tiny_base, tmp_path_factory):
    from lora_diffusion.models.loading import load_pipeline

    folder = tmp_path_factory.mktemp("loras")
    files = []
    for i, alpha in enumerate((4, 2)):
        comps = pipeline_components(load_pipeline(tiny_base))
        inject_adapter(comps["unet"], "x", LoraConfig(rank=4, alpha=alpha))
        inject_adapter(comps["te"], "x", LoraConfig(rank=4, alpha=alpha), kind="text")
        randomize_lora(comps["unet"], "x", 10 + i, 0.3)
        randomize_lora(comps["te"], "x", 20 + i, 0.3)
        files.append(str(save_adapter(folder / f"l{i}.safetensors", comps, "x")))
    return files


def _images(engine, base, loras, seed=5):
    out = engine.generate("abc", base=base, loras=loras, seed=seed, steps=4, width=32, height=32, num_images=2)
    return np.stack([np.asarray(img) for img, _ in out])


def test_all_weights_zero_is_bit_identical_after_any_changes(tiny_base, two_loras):
    engine = GenerationEngine(device="cpu")
    base_images = _images(engine, tiny_base, [])
    unet = engine.pipeline(tiny_base).unet
    a, b = two_loras
    for weights in [(1, 0.5), (-0.3, 2), (0.7, 0.0), (1.5, -1)]:
        changed = _images(engine, tiny_base, [LoraChoice(a, weights[0]), LoraChoice(b, weights[1])])
        assert not np.array_equal(changed, base_images)
    assert np.array_equal(_images(engine, tiny_base, [LoraChoice(a, 0.0), LoraChoice(b, 0.0)]), base_images)
    assert np.array_equal(_images(engine, tiny_base, []), base_images)
    assert all(layer.merged for layer in lora_layers(unet).values())


def test_blend_equals_weights_merged_by_hand_and_order_does_not_matter(tiny_base, two_loras):
    engine = GenerationEngine(device="cpu")
    pipe = engine.pipeline(tiny_base)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v"
    layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_v
    engine.set_loras(tiny_base, [])
    w0 = layer.base_layer.weight.detach().clone() if hasattr(layer, "base_layer") else layer.weight.detach().clone()
    a, b = two_loras
    da, db = read_adapter(a).modules[key].delta(), read_adapter(b).modules[key].delta()
    engine.set_loras(tiny_base, [LoraChoice(a, 0.8), LoraChoice(b, -0.3)])
    layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_v
    by_hand = w0 + 0.8 * da + (-0.3) * db
    torch.testing.assert_close(layer.base_layer.weight, by_hand, rtol=1e-5, atol=1e-6)
    first = layer.base_layer.weight.detach().clone()
    engine.set_loras(tiny_base, [LoraChoice(b, -0.3), LoraChoice(a, 0.8)])
    torch.testing.assert_close(layer.base_layer.weight, first, rtol=1e-6, atol=1e-7)


def test_same_arguments_and_seed_give_the_same_images_and_png_params_round_trip(tiny_base, two_loras, tmp_path, capsys):
    args = ["generate", "a test prompt", "--base", tiny_base, "--lora", f"{two_loras[0]}:0.6", "--lora", f"{two_loras[1]}:-0.25:0.5",
            "--seed", "11", "--steps", "3", "--width", "32", "--height", "32", "--num-images", "2",
            "--negative-prompt", "blurry", "--scheduler", "Euler a"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out.split()
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    second = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[1] for p in first] == ["00000-11.png", "00001-12.png"]
    for p, q in zip(first, second):
        from PIL import Image

        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(q)))
    params = read_png_params(first[1])
    assert params == GenerationParams(prompt="a test prompt", negative_prompt="blurry", steps=3, sampler="Euler a",
                                      cfg_scale=5.0, seed=12, width=32, height=32, model="tiny",
                                      loras=[("l0", 0.6), ("l1", -0.25)])


@pytest.mark.parametrize("second_layout", ["kohya", "diffusers"])
def test_kohya_and_diffusers_files_blend_like_diffusers_set_adapters(tiny_base, two_loras, second_layout, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from lora_diffusion import write_adapter

    pytest.importorskip("peft")
    second = two_loras[1]
    if second_layout == "diffusers":
        second = str(write_adapter(read_adapter(second), tmp_path / "l1_diffusers.safetensors", layout="diffusers"))
        assert read_adapter(second).layout == "diffusers"
    engine = GenerationEngine(device="cpu")
    ours = engine.generate("abc", base=tiny_base, loras=[LoraChoice(two_loras[0], 0.7), LoraChoice(second, -0.4)],
                           seed=3, steps=5, width=32, height=32, scheduler="DDIM")
    theirs = StableDiffusionPipeline.from_pretrained(tiny_base)
    theirs.scheduler = DDIMScheduler.from_config(theirs.scheduler.config)
    diffusers_load_lora(theirs, two_loras[0], "a")
    diffusers_load_lora(theirs, second, "b")
    theirs.set_adapters(["a", "b"], adapter_weights=[0.7, -0.4])
    image = theirs("abc", num_inference_steps=5, guidance_scale=5.0, width=32, height=32,
                   generator=[torch.Generator().manual_seed(3)]).images[0]
    diff = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(ours[0][0], dtype=np.int16))
    assert diff.max() <= 2, diff.max()


def test_lora_spec_parsing_and_errors(tmp_path):
    assert LoraChoice.parse("a.safetensors") == LoraChoice("a.safetensors", 1.0, None)
    assert LoraChoice.parse("dir/a.safetensors:-0.5") == LoraChoice("dir/a.safetensors", -0.5, None)
    assert LoraChoice.parse("C:/x/a.safetensors:1.5:0.25") == LoraChoice("C:/x/a.safetensors", 1.5, 0.25)
    engine = GenerationEngine(device="cpu")
    with pytest.raises(UserError, match="LoRA file not found"):
        engine.set_loras("builtin", [LoraChoice(str(tmp_path / "nope.safetensors"))])
    with pytest.raises(UserError, match="unknown scheduler 'Heun'; choose one of: DDIM, Euler, Euler a"):
        engine.generate("x", scheduler="Heun", steps=1)


def test_merged_forward_calls_no_lora_module(tiny_base, two_loras):
    """After blending, sampling runs only the base model's modules: it costs what the base costs."""
    engine = GenerationEngine(device="cpu")
    pipe = engine.pipeline(tiny_base)
    engine.set_loras(tiny_base, [LoraChoice(two_loras[0], 0.8), LoraChoice(two_loras[1], -0.3, 0.5)])
    calls = []
    hooks = []
    for model in pipeline_components(pipe).values():
        for layer in lora_layers(model).values():
            for store in (layer.lora_A, layer.lora_B):
                for module in store.values():
                    hooks.append(module.register_forward_hook(lambda *a: calls.append(1)))
    assert hooks
    try:
        _images(engine, tiny_base, [LoraChoice(two_loras[0], 0.8), LoraChoice(two_loras[1], -0.3, 0.5)])
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []


def test_prompt_tags_are_split_from_the_text_in_every_form():
    from lora_diffusion.generation.prompt_tags import LoraTag, split_lora_tags

    text, tags = split_lora_tags("a cat, <lora:ink:0.8> on a mat <lora:sepia_v2:0.5:-0.25>, <lora:bold>")
    assert text == "a cat, on a mat"
    assert tags == [LoraTag("ink", 0.8), LoraTag("sepia_v2", 0.5, -0.25), LoraTag("bold", 1.0)]
    assert split_lora_tags("no tags here") == ("no tags here", [])
    with pytest.raises(UserError, match=r"^prompt tag <lora:ink:strong>: weights must be numbers, e.g. <lora:ink:0.8>$"):
        split_lora_tags("x <lora:ink:strong>")


def test_a_tagged_prompt_generates_what_the_lora_flag_generates(tiny_base, two_loras, tmp_path, capsys):
    import shutil

    from PIL import Image

    library = tmp_path / "loras"
    library.mkdir()
    shutil.copy(two_loras[0], library / "first.safetensors")
    common = ["--base", tiny_base, "--seed", "11", "--steps", "3", "--width", "32", "--height", "32"]
    assert main(["generate", "a red circle", "--lora", f"{two_loras[0]}:0.6:0.3", "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["generate", "a red circle <lora:first:0.6:0.3>", "--lora-dir", str(library), "--out",
                 str(tmp_path / "b"), *common]) == 0
    flag, tag = capsys.readouterr().out.split()
    assert np.array_equal(np.asarray(Image.open(flag)), np.asarray(Image.open(tag)))
    assert main(["generate", "x <lora:frist:1>", "--lora-dir", str(library), *common]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: <lora:frist>: no frist.safetensors in the LoRA folder {library} (did you mean first?); "
        "set --lora-dir or fix the name")


def test_generation_dtype_is_half_on_cuda_and_fp32_on_the_cpu_and_weight_0_is_the_base_in_fp16(tiny_base, two_loras):
    from lora_diffusion.generation.precision import generation_dtype
    from lora_diffusion.models.loading import load_pipeline

    assert generation_dtype("auto", "cuda") == torch.float16 and generation_dtype("auto", "cuda:1") == torch.float16
    assert generation_dtype("auto", "cpu") == torch.float32 and generation_dtype("BF16", "cuda") == torch.bfloat16
    with pytest.raises(UserError, match=r"^--dtype 'half' is not known; choose auto, fp16, bf16 or fp32$"):
        generation_dtype("half", "cpu")
    engine = GenerationEngine(device="cpu", dtype=torch.float16)
    engine.set_loras(tiny_base, [LoraChoice(two_loras[0], 0.8), LoraChoice(two_loras[1], -0.5)])
    engine.set_loras(tiny_base, [LoraChoice(two_loras[0], 0.0)])
    blended = engine.pipeline(tiny_base).unet.state_dict()
    reference = load_pipeline(tiny_base, dtype=torch.float16).unet.state_dict()
    wrapped = [k for k in reference if k not in blended]  # the LoRA-wrapped layers keep W under base_layer
    assert len(wrapped) >= 32
    for key, value in reference.items():
        ours = blended[key] if key in blended else blended[key.replace(".weight", ".base_layer.weight")
                                                         .replace(".bias", ".base_layer.bias")]
        assert ours.dtype == torch.float16 and torch.equal(ours, value), key


def test_from_png_regenerates_the_same_image_with_its_loras(tiny_base, two_loras, tmp_path, capsys):
    import shutil

    from PIL import Image

    library = tmp_path / "loras"
    library.mkdir()
    shutil.copy(two_loras[1], library / "second.safetensors")
    assert main(["generate", "a green square <lora:second:0.7>", "--negative-prompt", "blurry", "--base", tiny_base,
                 "--lora-dir", str(library), "--seed", "21", "--steps", "3", "--guidance", "6.5", "--scheduler",
                 "Euler a", "--width", "32", "--height", "40", "--out", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["generate", "--from-png", first, "--base", tiny_base, "--lora-dir", str(library),
                 "--out", str(tmp_path / "b")]) == 0
    again = capsys.readouterr().out.strip()
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    assert Image.open(first).text["parameters"] == Image.open(again).text["parameters"]
    assert main(["generate", "--from-png", first, "--base", tiny_base, "--lora-dir", str(tmp_path)]) == 2
    assert "<lora:second>: no second.safetensors in the LoRA folder" in capsys.readouterr().err


def test_grid_has_a_cell_per_weight_and_seed_and_the_zero_row_is_the_base(tiny_base, two_loras, tmp_path, capsys):
    from PIL import Image

    from lora_diffusion.generation.grid import LABEL_PX

    out = tmp_path / "grid.png"
    assert main(["grid", "a red circle", "--base", tiny_base, "--lora", two_loras[0], "--weights", "0,1",
                 "--seeds", "3,4,5", "--steps", "2", "--width", "32", "--height", "32", "--out", str(out)]) == 0
    grid = Image.open(out)
    assert grid.size == (LABEL_PX * 4 + 3 * 32, LABEL_PX + 2 * 32)
    assert grid.text["grid"] == "rows: l0 0 | l0 1\ncolumns: seed 3 | seed 4 | seed 5"
    cells = grid.text["parameters"].split("\n\n")
    assert len(cells) == 6 and "Seed: 3" in cells[0] and "Seed: 5" in cells[5] and "<lora:l0:1>" in cells[5]
    assert main(["generate", "a red circle", "--base", tiny_base, "--seed", "4", "--steps", "2", "--width", "32",
                 "--height", "32", "--out", str(tmp_path / "plain")]) == 0
    plain = np.asarray(Image.open(capsys.readouterr().out.split()[-1]))
    cell = np.asarray(grid)[LABEL_PX:LABEL_PX + 32, LABEL_PX * 4 + 32:LABEL_PX * 4 + 64]
    assert np.array_equal(cell, plain)  # weight 0, seed 4: exactly the base's image
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue square\n\na green circle\n")
    assert main(["grid", "a red circle", "--base", tiny_base, "--lora", two_loras[0], "--weights", "0,0.5,1",
                 "--prompts", str(prompts), "--steps", "2", "--width", "32", "--height", "32", "--out",
                 str(tmp_path / "p.png")]) == 0
    capsys.readouterr()
    assert Image.open(tmp_path / "p.png").text["grid"] == (
        "rows: l0 0 | l0 0.5 | l0 1\ncolumns: a red circle | a blue square | a green circle")
    assert main(["grid", "x", "--lora", two_loras[0], "--weights", "0,half"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --weights '0,half': write comma-separated numbers, e.g. --weights 0,0.5,1")


def test_an_explicit_flag_equal_to_the_default_wins_over_from_png(tmp_path):
    import argparse

    from lora_diffusion.cli.generate_cmd import fill_generation_defaults, _fill_from_png
    from lora_diffusion.generation.params import GenerationParams, save_png
    from PIL import Image

    png = save_png(Image.new("RGB", (8, 8)), tmp_path / "p.png",
                   GenerationParams(prompt="a cat", steps=9, cfg_scale=7.5, sampler="Euler a", width=32, height=32))
    given = argparse.Namespace(from_png=str(png), prompt=None, negative_prompt="", seed=None, width=None, height=None,
                               steps=20, guidance=None, scheduler="DPM++ 2M", base="builtin")  # --steps 20 --scheduler "DPM++ 2M"
    _fill_from_png(given)
    fill_generation_defaults(given)
    assert (given.steps, given.guidance, given.scheduler) == (20, 7.5, "DPM++ 2M")
    bare = argparse.Namespace(prompt="x", from_png=None, steps=None, guidance=None, scheduler=None, base="builtin")
    fill_generation_defaults(bare)
    assert (bare.steps, bare.guidance, bare.scheduler) == (20, 5.0, "DPM++ 2M")


def test_unset_generation_flags_take_the_base_family_defaults(tmp_path, monkeypatch):
    import argparse

    import dataclasses

    import lora_diffusion.families as families
    from lora_diffusion.cli.generate_cmd import fill_generation_defaults
    from lora_diffusion.generation.defaults import GenerationDefaults

    # a family with its own defaults (as FLUX.1 will have: 28 steps, guidance 3.5) gives them to an unset flag
    own = dataclasses.replace(families.get("builtin"), generation=GenerationDefaults(28, 3.5, "Euler"))
    monkeypatch.setattr(families, "family_of_configs", lambda configs: own)
    args = argparse.Namespace(prompt="x", from_png=None, steps=None, guidance=4.0, scheduler=None, base="builtin")
    fill_generation_defaults(args)
    assert (args.steps, args.guidance, args.scheduler) == (28, 4.0, "Euler")


def test_from_png_without_a_prompt_says_so(tmp_path, capsys):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a" * 60000)  # one long settings line: no prompt at all
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png", pnginfo=info)
    assert main(["generate", "--from-png", str(tmp_path / "p.png"), "--out", str(tmp_path / "o")]) == 2
    assert "its parameters hold no prompt; give one" in capsys.readouterr().err


def test_the_same_lora_twice_adds_its_weights_and_is_recorded_once(tiny_base, two_loras, tmp_path, capsys):
    """``--lora a:1 --lora a:1`` (or the same file under another name) is ``a`` at weight 2, as A1111 reads two tags
    of one LoRA: the image equals ``--lora a:2`` and its parameters hold one ``<lora:a:2>`` tag."""
    import shutil

    from PIL import Image

    copy = tmp_path / "again.safetensors"
    shutil.copy(two_loras[0], copy)
    common = ["a red circle", "--base", tiny_base, "--seed", "11", "--steps", "3", "--width", "32", "--height", "32"]
    assert main(["generate", *common, "--lora", f"{two_loras[0]}:1", "--lora", f"{copy}:1:0.5",
                 "--out", str(tmp_path / "twice")]) == 0
    assert main(["generate", *common, "--lora", f"{two_loras[0]}:2:1.5", "--out", str(tmp_path / "once")]) == 0
    twice, once = capsys.readouterr().out.split()
    assert np.array_equal(np.asarray(Image.open(twice)), np.asarray(Image.open(once)))
    assert Image.open(twice).info["parameters"].splitlines()[0] == "a red circle <lora:l0:2>"
