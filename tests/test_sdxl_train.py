"""`lora-diffusion train` on a tiny SDXL-architecture base: both text encoders, size conditioning,
caching, resume, interop with diffusers' SDXL pipeline, and the bases it must refuse."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import assert_kill_and_resume_is_bit_identical, diffusers_load_lora, randomize_lora
from lora_diffusion import UserError, load_adapter, pipeline_components
from lora_diffusion.cli.main import main
from lora_diffusion.data.dataset import TrainingData
from lora_diffusion.data.folder import scan_folder
from lora_diffusion.models.loading import load_pipeline
from lora_diffusion.models.tiny import tiny_pipeline
from lora_diffusion.training.conditioning import SdxlEncoders, conditioning_for
from lora_diffusion.training.config import TrainConfig
from lora_diffusion.training.objective import denoising_loss
from lora_diffusion.training.trainer import train

SIZES = [(32, 32), (60, 40), (100, 40), (40, 64)]  # (w, h): square, landscape, wide (cropped), portrait


@pytest.fixture(scope="module")
def sdxl_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl"
    tiny_pipeline("sdxl", seed=0).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    for i, (size, color) in enumerate(zip(SIZES, [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)])):
        image = Image.new("RGB", size, (230, 210, 170))
        image.paste(color, (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
        image.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a square number {i}")
    return str(folder)


def _cfg(base, data, out, **kw):
    values = dict(base=base, data=data, output=str(out), resolution=32, steps=8, batch_size=1, lr=5e-3, seed=1,
                  caption_dropout=0.0)
    return TrainConfig(**values | kw)


def _fixed_loss(base, data, adapter, weight):
    """The loss over every example with fixed noise and timesteps, the LoRA at ``weight``."""
    from diffusers import DDPMScheduler

    from lora_diffusion import set_adapter_weight

    pipe = load_pipeline(base)
    name = load_adapter(adapter, pipeline_components(pipe))
    set_adapter_weight(pipe.unet, name, weight)
    conditioning = conditioning_for(pipe, base)
    d = TrainingData(scan_folder(data).examples, 32, bucketing=True)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    total = 0.0
    with torch.no_grad():
        for i in range(len(d.items)):
            latents = pipe.vae.encode(d.pixels(i, 0)[None]).latent_dist.mean * pipe.vae.config.scaling_factor
            encoded = conditioning.encode([d.caption(i, 0)], torch.device("cpu"))
            states, added = conditioning.unet_inputs(encoded, [d.geometry(i, 0)])
            for k in range(4):
                total += denoising_loss(pipe.unet, scheduler, latents, states, torch.Generator().manual_seed(k),
                                        added_cond_kwargs=added).item()
    return total


def test_short_run_lowers_the_fixed_noise_loss_and_inspect_reads_sdxl(sdxl_base, shapes_folder, tmp_path, capsys):
    out = tmp_path / "style.safetensors"
    result = train(_cfg(sdxl_base, shapes_folder, out, steps=40, rank=4), progress=False)
    assert result.steps == 40 and out.is_file()
    assert _fixed_loss(sdxl_base, shapes_folder, out, 1.0) < _fixed_loss(sdxl_base, shapes_folder, out, 0.0)
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["base"] == "sdxl" and info["rank"] == 4
    assert info["metadata"]["ss_base_model_version"] == "sdxl_base_v1-0"
    # three buckets: the square image, the two landscape ones, the portrait one
    assert json.loads(info["metadata"]["lora_diffusion.dataset"])["buckets"] == {"32x32": 1, "40x24": 2, "24x40": 1}


def test_text_encoder_training_writes_te1_and_te2_that_diffusers_loads_alike(sdxl_base, shapes_folder, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "te.safetensors"
    train(_cfg(sdxl_base, shapes_folder, out, steps=3, rank=4, train_text_encoder=True, text_encoder_lr=1e-2),
          progress=False)
    tensors = load_file(str(out))
    def ups(prefix):
        return [v for k, v in tensors.items() if k.startswith(prefix) and k.endswith("lora_up.weight")]

    for prefix in ("lora_te1_text_model_encoder_layers_0_", "lora_te2_", "lora_unet_"):
        assert len(ups(prefix)) >= 4 and all(t.abs().sum() > 0 for t in ups(prefix)), prefix  # trained away from zero
    # SDXL reads the first encoder's penultimate states: its last layer gets no gradient (as in kohya's files)
    assert len(ups("lora_te1_text_model_encoder_layers_1_")) == 4
    assert all(t.abs().sum() == 0 for t in ups("lora_te1_text_model_encoder_layers_1_"))

    ours, theirs, base = (load_pipeline(sdxl_base) for _ in range(3))
    load_adapter(out, pipeline_components(ours))
    diffusers_load_lora(theirs, out, "style")
    ids = torch.randint(3, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for attr in ("text_encoder", "text_encoder_2"):
            te = [getattr(p, attr)(ids, output_hidden_states=True).hidden_states[-2] for p in (ours, theirs, base)]
            assert (te[1] - te[2]).abs().max() > 1e-4, attr  # the file's text-encoder half took effect in diffusers
            torch.testing.assert_close(te[0], te[1], rtol=1e-4, atol=1e-5)
        g = torch.Generator().manual_seed(1)
        sample, states = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 8, 2048, generator=g)
        added = {"text_embeds": torch.randn(2, 1280, generator=g), "time_ids": torch.tensor([[32, 32, 0, 0, 32, 32]] * 2)}
        unet = [p.unet(sample, 10, states, added_cond_kwargs=added).sample for p in (ours, theirs, base)]
    assert (unet[1] - unet[2]).abs().max() > 1e-4
    torch.testing.assert_close(unet[0], unet[1], rtol=1e-4, atol=1e-5)


def test_cached_and_uncached_runs_give_the_same_loss_sequence(sdxl_base, shapes_folder, tmp_path):
    cached = train(_cfg(sdxl_base, shapes_folder, tmp_path / "a.safetensors", cache="memory"), progress=False)
    uncached = train(_cfg(sdxl_base, shapes_folder, tmp_path / "b.safetensors", cache="off"), progress=False)
    assert len(cached.losses) == 8
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(uncached.losses), rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # the quick suite keeps the SD1-shaped run of the same test (test_train.py)
def test_kill_after_checkpoint_then_resume_is_bit_identical(sdxl_base, shapes_folder, tmp_path):
    assert_kill_and_resume_is_bit_identical(
        ["--base", sdxl_base, "--data", shapes_folder, "--steps", "6", "--lr", "5e-3", "--seed", "4",
         "--checkpoint-every", "3", "--quiet"], tmp_path)


def test_add_time_ids_of_a_cropped_bucketed_image_equal_diffusers(shapes_folder):
    pipe = tiny_pipeline("sdxl", seed=0)
    data = TrainingData(scan_folder(shapes_folder).examples, 32, bucketing=True)
    wide = next(i for i, e in enumerate(data.items) if e.path.endswith("2.png"))  # 100x40 into the 40x24 bucket
    geometry = data.geometry(wide, 0)
    # resized to cover 40x24: 60x24, centre crop at left (60 - 40) // 2 = 10
    assert (geometry.original, geometry.crop_top_left, geometry.target) == ((40, 100), (0, 10), (24, 40))
    assert data.pixels(wide, 0).shape == (3, 24, 40)
    theirs = pipe._get_add_time_ids(geometry.original, geometry.crop_top_left, geometry.target, torch.float32,
                                    text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    encoded = SdxlEncoders(pipe).encode(["a square"], torch.device("cpu"))
    _, added = SdxlEncoders(pipe).unet_inputs(encoded, [geometry])
    assert torch.equal(added["time_ids"], theirs)
    # a random crop is conditioned on where it was taken; a flipped one on the mirrored offset
    flipped = TrainingData(scan_folder(shapes_folder).examples, 32, bucketing=True, crop="random", flip=True, seed=3)
    offsets = {flipped.geometry(wide, epoch).crop_top_left for epoch in range(12)}
    assert len(offsets) > 2 and all(top == 0 and 0 <= left <= 20 for top, left in offsets)


def test_text_conditioning_equals_the_sdxl_pipelines_own():
    pipe = tiny_pipeline("sdxl", seed=0)
    prompts = ["a red square", ""]
    encoded = SdxlEncoders(pipe).encode(prompts, torch.device("cpu"))
    with torch.no_grad():
        states, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(encoded["states"].detach(), states) and torch.equal(encoded["pooled"].detach(), pooled)


def test_an_sdxl_refiner_is_refused_for_training(sdxl_base, shapes_folder, tmp_path, capsys):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    full = tiny_pipeline("sdxl", seed=0)
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=full.vae, text_encoder=None, text_encoder_2=full.text_encoder_2, tokenizer=None,
        tokenizer_2=full.tokenizer_2, unet=full.unet, scheduler=full.scheduler, requires_aesthetics_score=True)
    refiner.save_pretrained(str(tmp_path / "refiner"))
    code = main(["train", "--base", str(tmp_path / "refiner"), "--data", shapes_folder,
                 "--output", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not (tmp_path / "x.safetensors").exists()
    assert err[-1].endswith("is an SDXL refiner (one 1280-wide text encoder, aesthetic-score conditioning): "
                            "train LoRAs on the SDXL base model and use the refiner as it is")


def test_an_sdxl_lora_on_an_sd1_base_and_the_reverse_are_refused_naming_both(tmp_path):
    files = {}
    for arch in ("sdxl", "sd1"):
        comps = pipeline_components(tiny_pipeline(arch, seed=0))
        from lora_diffusion import LoraConfig, inject_adapter, save_adapter

        inject_adapter(comps["unet"], "x", LoraConfig(rank=2))
        randomize_lora(comps["unet"], "x")
        files[arch] = save_adapter(tmp_path / f"{arch}.safetensors", comps, "x")
    for file_arch, base_arch, labels in (("sdxl", "sd1", ("SDXL", "SD1.x")), ("sd1", "sdxl", ("SD1.x", "SDXL"))):
        with pytest.raises(UserError) as error:
            load_adapter(files[file_arch], pipeline_components(tiny_pipeline(base_arch, seed=0)))
        message = str(error.value)
        assert "\n" not in message
        assert f"this LoRA was made for {labels[0]}; the loaded base is {labels[1]}" in message


def test_ui_finds_sdxl_bases_and_generates_at_their_native_size(sdxl_base, shapes_folder, tmp_path):
    import shutil

    from lora_diffusion.models.single_file import save_single_file
    from lora_diffusion.ui.app import UiState

    models, loras = tmp_path / "models", tmp_path / "loras"
    models.mkdir()
    loras.mkdir()
    shutil.copytree(sdxl_base, models / "my-sdxl")
    save_single_file(tiny_pipeline("sdxl", seed=0), models / "xl-single.safetensors", "sdxl", dtype="fp32")
    (models / "notes.txt").write_text("not a model")
    train(_cfg(sdxl_base, shapes_folder, loras / "xl-style.safetensors", steps=2), progress=False)
    state = UiState(str(loras), models_dir=str(models), out_dir=str(tmp_path / "out"), device="cpu")
    assert state.base_choices() == ["builtin", str(models / "my-sdxl"), str(models / "xl-single.safetensors")]
    slots = [True, "xl-style", 0.7] + [False, None, 1.0] * 3
    gallery, params = state.generate(str(models / "my-sdxl"), "a red square", "", 3, 2, 5.0, 0, 0, "Euler", 1, slots)
    assert Image.open(gallery[0][0]).size == (32, 32)  # the tiny SDXL's native size: 16 latents x 2
    assert "<lora:xl-style:0.7>" in params and "Size: 32x32" in params
