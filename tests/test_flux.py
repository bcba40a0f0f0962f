"""FLUX.1 as a base family on a tiny random pipeline of the real architecture (one double and one single block,
CLIP-L- and T5-shaped encoders, an offline T5 tokenizer): recognised, conditioned and packed as diffusers'
FluxPipeline does, trained with the simplest command (derived plan, flow-matching loss lowered), resumed bit for
bit, cached = uncached, LoKr and DoRA."""

import pytest
import torch
from PIL import Image

from conftest import assert_kill_and_resume_is_bit_identical, family_fixed_loss, saved_tiny_base
from lora_diffusion import load_adapter, pipeline_components, read_adapter, set_adapter_weight
from lora_diffusion.cli.main import main
from lora_diffusion.families import family_of, family_of_base, family_of_checkpoint
from lora_diffusion.families.flow_matching import FluxObjective, image_ids, pack, unpack
from lora_diffusion.models.tiny import tiny_pipeline
from lora_diffusion.training.config import TrainConfig
from lora_diffusion.training.objective import Share
from lora_diffusion.training.trainer import train


@pytest.fixture(scope="module")
def flux_base(tmp_path_factory):
    return saved_tiny_base(tmp_path_factory, "flux")


def test_flux_is_recognised_from_a_pipeline_its_folder_and_its_single_file_names(flux_base):
    from lora_diffusion.models.loading import load_pipeline

    assert family_of(load_pipeline(flux_base)).name == "flux"
    assert family_of_base(flux_base).name == "flux"
    assert family_of_checkpoint({"double_blocks.0.img_attn.qkv.weight", "img_in.weight"}).name == "flux"
    assert family_of_checkpoint({"model.diffusion_model.input_blocks.0.0.weight"}).name == "sd1"


def test_latents_are_packed_and_conditioned_as_fluxpipeline_does():
    from diffusers import FluxPipeline

    from lora_diffusion.families.flux_conditioning import FluxEncoders

    latents = torch.randn(2, 4, 8, 6)
    assert torch.equal(pack(latents), FluxPipeline._pack_latents(latents, 2, 4, 8, 6))
    assert torch.equal(unpack(pack(latents), 8, 6), latents)
    assert torch.equal(image_ids(8, 6, "cpu", torch.float32),
                       FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32))
    pipe = tiny_pipeline("flux")
    ours = FluxEncoders(pipe, 512).encode(["a red circle", "two blue squares"], torch.device("cpu"))
    states, pooled, _ = pipe.encode_prompt(["a red circle", "two blue squares"], max_sequence_length=512)
    assert torch.equal(ours["states"], states) and torch.equal(ours["pooled"], pooled)


@pytest.fixture(scope="module")
def flux_lora(flux_base, squares, tmp_path_factory):
    """A LoRA trained with the simplest command (the derived plan; steps and lr shortened for a test) and what it
    printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("flux-lora") / "flux.safetensors"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--base", flux_base, "--data", squares, "--output", str(out), "--steps", "40",
                     "--lr", "5e-3"])
    assert code == 0, err.getvalue()
    return out, err.getvalue()


def test_the_simplest_command_trains_flux_with_a_derived_plan_and_lowers_the_loss(flux_base, squares, flux_lora):
    out, err = flux_lora
    assert "plan: profile flux (profiles/flux.yaml), 4 images" in err and "targets = attn  (profile flux)" in err
    adapter = read_adapter(out)
    assert adapter.metadata["ss_base_model_version"] == "flux1" and adapter.rank == 16
    # attention of the double block (image and text streams: 8 projections) and of the single block (q, k, v)
    assert len(adapter.modules) == 11
    assert "lora_unet_transformer_blocks_0_attn_add_q_proj" in adapter.modules
    assert "lora_unet_single_transformer_blocks_0_attn_to_v" in adapter.modules
    before, after = family_fixed_loss(flux_base, squares), family_fixed_loss(flux_base, squares, str(out))
    assert after < 0.9 * before, (before, after)


def test_flux_generates_with_its_family_defaults_and_blends_by_weight(flux_base, flux_lora, tmp_path, capsys):
    import numpy as np

    from lora_diffusion.generation.engine import GenerationEngine, LoraChoice

    out, _ = flux_lora
    assert main(["generate", "a square 1", "--base", flux_base, "--lora", f"{out}:1", "--out", str(tmp_path),
                 "--seed", "3"]) == 0
    png = Image.open(next(tmp_path.glob("*.png")))
    assert "Steps: 28, Sampler: Euler, CFG scale: 3.5, Seed: 3, Size: 32x32" in png.info["parameters"]
    engine = GenerationEngine(device="cpu")
    images = {w: np.asarray(engine.generate("a square 1", base=flux_base, loras=[LoraChoice(str(out), w)], seed=3,
                                            steps=4, guidance=3.5, scheduler="Euler")[0][0]).astype(int)
              for w in (0.0, 1.0)}
    plain = np.asarray(engine.generate("a square 1", base=flux_base, seed=3, steps=4, guidance=3.5,
                                       scheduler="Euler")[0][0]).astype(int)
    assert np.array_equal(images[0.0], plain) and np.abs(images[1.0] - plain).mean() > 1
    assert main(["generate", "x", "--base", flux_base, "--scheduler", "DPM++ 2M", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("unknown scheduler 'DPM++ 2M' for this rectified-flow base "
                                                    "(FLUX.1, SD3); choose one of: Euler, Heun")


def test_a_flux_lora_offered_to_an_sd_base_is_one_line_naming_both(flux_lora, tmp_path, capsys):
    out, _ = flux_lora
    assert main(["generate", "x", "--lora", f"{out}:1", "--out", str(tmp_path)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: LoRA file {out} does not fit the base model") and line.endswith(
        "this LoRA was made for FLUX.1; the loaded base is the built-in base")


@pytest.mark.slow  # three training processes; the quick suite keeps the SD1-shaped twin (test_train.py)
def test_flux_kill_after_checkpoint_then_resume_is_bit_identical(flux_base, squares, tmp_path):
    assert_kill_and_resume_is_bit_identical(
        ["--base", flux_base, "--data", squares, "--steps", "6", "--batch-size", "2", "--lr", "5e-3", "--seed", "4",
         "--checkpoint-every", "3", "--quiet"], tmp_path)


@pytest.mark.parametrize("extra", [{}, pytest.param({"network": "lokr"}, marks=pytest.mark.slow),
                                   pytest.param({"dora": True}, marks=pytest.mark.slow)])
def test_cached_and_uncached_flux_runs_match_for_lora_lokr_and_dora(flux_base, squares, tmp_path, extra):
    runs = [train(TrainConfig(base=flux_base, data=squares, output=str(tmp_path / f"{cache}.safetensors"), steps=4,
                              batch_size=2, lr=5e-3, cache=cache, **extra), progress=False).losses
            for cache in ("memory", "off")]
    assert runs[0] == runs[1] and len(runs[0]) == 4 and all(torch.isfinite(torch.tensor(runs[0])))


def test_a_sigma_window_bounds_the_noise_levels():
    objective = FluxObjective(guidance_embeds=False)
    sigmas = objective.sigmas(4096, Share(0, 4096), torch.Generator().manual_seed(0), (200, 600))
    assert float(sigmas.min()) >= 0.2 and float(sigmas.max()) <= 0.6
    whole = objective.sigmas(4096, Share(0, 4096), torch.Generator().manual_seed(0), None)
    assert 0.45 < float(whole.median()) < 0.55  # logit-normal: centred on the middle noise level


def test_fusing_qkv_for_the_bfl_layout_is_exact_and_splits_back():
    from lora_diffusion.adapters.flux_layout import from_bfl, to_bfl
    from lora_diffusion.adapters.modules import ModuleLora

    g = torch.Generator().manual_seed(0)

    def lora(rank, out, inp, alpha):
        return ModuleLora(alpha=alpha, down=torch.randn(rank, inp, generator=g), up=torch.randn(out, rank, generator=g))

    ours = {f"lora_unet_transformer_blocks_0_attn_to_{p}": lora(4, 16, 16, a) for p, a in zip("qkv", (4.0, 2.0, 8.0))}
    ours |= {f"lora_unet_single_transformer_blocks_0_attn_to_{p}": lora(4, 16, 16, 4.0) for p in "qkv"}
    ours["lora_unet_single_transformer_blocks_0_proj_out"] = lora(4, 16, 80, 1.0)
    bfl = to_bfl(ours)
    assert sorted(bfl) == ["lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1",
                           "lora_unet_single_blocks_0_linear2"]
    qkv = bfl["lora_unet_double_blocks_0_img_attn_qkv"].delta()
    stacked = torch.cat([ours[f"lora_unet_transformer_blocks_0_attn_to_{p}"].delta() for p in "qkv"])
    assert torch.allclose(qkv, stacked, atol=1e-5)
    linear1 = bfl["lora_unet_single_blocks_0_linear1"].delta()
    assert linear1.shape == (16 * 7, 16) and not linear1[48:].any()  # the MLP input rows: untrained, zero
    back = from_bfl(bfl)
    assert sorted(back) == sorted(ours)
    for name, module in ours.items():
        assert back[name].rank == module.rank and torch.allclose(back[name].delta(), module.delta(), atol=1e-5)


def test_diffusers_loads_our_bfl_file_and_gets_our_transformer_output(flux_base, tmp_path):
    """Every double-block module in our BFL file, fused q/k/v included, loads in diffusers' ``load_lora_weights``
    with the same transformer output as ours. (diffusers splits a single block's ``linear1`` at FLUX.1's real
    widths, 3072/12288, so the tiny model's single blocks cannot go through it; their split is tested above.)"""
    from lora_diffusion.adapters.file import AdapterFile, write_adapter
    from lora_diffusion.adapters.flux_layout import DOUBLE
    from lora_diffusion.adapters.modules import ModuleLora
    from lora_diffusion.models.loading import load_pipeline

    ours = load_pipeline(flux_base)
    shapes = {path.replace(".", "_"): tuple(m.weight.shape) for path, m in ours.transformer.named_modules()
              if isinstance(m, torch.nn.Linear)}
    g = torch.Generator().manual_seed(2)
    modules = {}
    for sub in DOUBLE:
        out_features, in_features = shapes[f"transformer_blocks_0_{sub}"]
        modules[f"lora_unet_transformer_blocks_0_{sub}"] = ModuleLora(
            alpha=2.0, down=torch.randn(4, in_features, generator=g) * 0.3, up=torch.randn(out_features, 4, generator=g) * 0.3)
    path = write_adapter(AdapterFile(modules, {"ss_base_model_version": "flux1"}), tmp_path / "double.safetensors",
                         dtype="fp32")
    components = pipeline_components(ours)
    set_adapter_weight(components["unet"], load_adapter(path, components), 1.0)
    theirs = load_pipeline(flux_base)
    theirs.load_lora_weights(str(path))
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 16, 16, generator=g), encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                  pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                  img_ids=image_ids(8, 8, "cpu", torch.float32), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([1.0]))
    with torch.no_grad():
        a = ours.transformer(**inputs).sample
        b = theirs.transformer(**inputs).sample
        base = load_pipeline(flux_base).transformer(**inputs).sample
    assert (a - base).abs().max() > 1e-2  # the LoRA changes the output ...
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # ... and diffusers reads it as we do


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_flux_trains_on_a_quantized_base(flux_base, squares, tmp_path, capsys, precision):
    out = tmp_path / "q.safetensors"
    assert main(["train", "--base", flux_base, "--data", squares, "--output", str(out), "--steps", "3",
                 "--base-precision", precision]) == 0
    assert f"base precision: {precision} for " in capsys.readouterr().err
    assert len(read_adapter(out).modules) == 11


def test_a_flux_lora_diffusers_writes_loads_in_ours_with_its_transformer_output(flux_base, tmp_path):
    """diffusers/PEFT's own FLUX layout (``transformer.…lora_A/lora_B`` + its alpha metadata, what diffusers,
    ai-toolkit and SimpleTuner save) read by our loader gives diffusers' own transformer output."""
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from lora_diffusion.models.loading import load_pipeline

    theirs = load_pipeline(flux_base)
    theirs.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                              target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
                                                              "proj_mlp"]))
    with torch.no_grad():
        for name, param in theirs.transformer.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))) * 0.2)
    FluxPipeline.save_lora_weights(str(tmp_path), transformer_lora_layers=get_peft_model_state_dict(theirs.transformer),
                                   transformer_lora_adapter_metadata={"r": 4, "lora_alpha": 8})
    path = tmp_path / "pytorch_lora_weights.safetensors"
    adapter = read_adapter(path)
    assert adapter.layout == "diffusers" and adapter.architecture() == "flux" and adapter.alpha == 8
    ours = load_pipeline(flux_base)
    components = pipeline_components(ours)
    set_adapter_weight(components["unet"], load_adapter(path, components), 1.0)
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 16, 16, generator=g), encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                  pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                  img_ids=image_ids(8, 8, "cpu", torch.float32), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([1.0]))
    with torch.no_grad():
        torch.testing.assert_close(ours.transformer(**inputs).sample, theirs.transformer(**inputs).sample,
                                   rtol=1e-4, atol=1e-5)
    # and back: our diffusers-layout FLUX file is what diffusers loads, with the same output
    from lora_diffusion.adapters.file import write_adapter

    again = write_adapter(adapter, tmp_path / "back.safetensors", dtype="fp32", layout="diffusers")
    reloaded = load_pipeline(flux_base)
    reloaded.load_lora_weights(str(again))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.transformer(**inputs).sample, theirs.transformer(**inputs).sample,
                                   rtol=1e-4, atol=1e-5)


def test_the_generate_tab_offers_flux_samplers_and_defaults_for_a_flux_base(flux_base):
    from lora_diffusion.ui.app import base_generation_defaults

    assert base_generation_defaults(flux_base) == (["Euler", "Heun"], "Euler", 28, 3.5)
    names, sampler, steps, guidance = base_generation_defaults("builtin")
    assert "DPM++ 2M" in names and (sampler, steps, guidance) == ("DPM++ 2M", 20, 5.0)
    assert base_generation_defaults("/no/such/folder/") is None


def test_flux_trains_clip_l_on_request_and_leaves_t5_frozen(flux_base, squares, tmp_path):
    out = tmp_path / "te.safetensors"
    train(TrainConfig(base=flux_base, data=squares, output=str(out), steps=2, train_text_encoder=True), progress=False)
    components = read_adapter(out).components
    assert components == ["te1", "unet"]  # kohya's lora_te1_ (CLIP-L); T5 has no LoRA role


def test_a_schnell_base_generates_in_4_steps_without_guidance_and_trains_with_256_t5_tokens(tmp_path, squares):
    """FLUX.1-schnell (no guidance embedding) is told apart by its config: 4 steps, guidance 0 in generate, the
    UI and the PNG parameters; its training reads 256 T5 tokens and feeds no guidance."""
    from lora_diffusion.families.flow_matching import FluxObjective
    from lora_diffusion.models.loading import load_pipeline
    from lora_diffusion.models.tiny import tiny_flux_pipeline
    from lora_diffusion.ui.app import base_generation_defaults

    schnell = tmp_path / "schnell"
    tiny_flux_pipeline(guidance=False).save_pretrained(str(schnell))
    assert base_generation_defaults(str(schnell)) == (["Euler", "Heun"], "Euler", 4, 0.0)
    assert main(["generate", "a square 1", "--base", str(schnell), "--out", str(tmp_path / "png"), "--seed", "3"]) == 0
    png = Image.open(next((tmp_path / "png").glob("*.png")))
    assert "Steps: 4, Sampler: Euler, CFG scale: 0, Seed: 3" in png.info["parameters"]
    pipe = load_pipeline(str(schnell))
    family = family_of(pipe)
    assert family.conditioning(pipe, str(schnell)).max_length == 256
    assert family.objective(pipe).guidance is None and isinstance(family.objective(pipe), FluxObjective)


def test_timestep_sampling_options_draw_as_the_field_does():
    """``--timestep-sampling``: flux-shift is FluxPipeline's own shift (diffusers' ``calculate_shift`` and the
    scheduler's ``time_shift`` are the oracle), shift is kohya's ``discrete_flow_shift`` formula, uniform is
    uniform; ``--train-guidance`` reaches dev's guidance input."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    share = Share(0, 4096)

    def draw(sampling, tokens=4096, shift=3.0):
        objective = FluxObjective(guidance_embeds=True)
        objective.configure(sampling, shift, 3.5)
        assert objective.guidance == 3.5
        return objective.sigmas(4096, share, torch.Generator().manual_seed(0), None, tokens)

    u = torch.sigmoid(torch.randn(4096, generator=torch.Generator().manual_seed(0)))
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    for tokens in (256, 1024, 4096):
        expected = scheduler.time_shift(calculate_shift(tokens), 1.0, u)
        torch.testing.assert_close(draw("flux-shift", tokens), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(draw("shift", shift=3.0), 3.0 * u / (1 + 2.0 * u))
    torch.testing.assert_close(draw("sigmoid"), u)
    torch.testing.assert_close(draw("logit-normal"), u)
    uniform = draw("uniform")
    assert 0 <= float(uniform.min()) and float(uniform.max()) <= 1 and abs(float(uniform.mean()) - 0.5) < 0.02
    auto = FluxObjective(guidance_embeds=True)
    auto.configure("auto", 3.0, 1.0)
    assert (auto.sampling, auto.shift, auto.guidance) == ("sigmoid", 1.0, 1.0)  # FLUX's own, as before


def test_flow_settings_on_a_ddpm_base_are_one_line(tiny_base, squares, tmp_path, capsys):
    assert main(["train", "--base", tiny_base, "--data", squares, "--output", str(tmp_path / "x.safetensors"),
                 "--steps", "1", "--timestep-sampling", "flux-shift"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --timestep-sampling, --discrete-flow-shift and --train-guidance apply to rectified-flow bases "
        "(FLUX.1, SD3); this base trains with DDPM noise: use --min-timestep/--max-timestep or --min-snr-gamma "
        "instead")


def test_the_guides_features_train_flux_too(flux_base, style_folder, tmp_path):
    """Issue 33 on a DiT: subsets with class images, masks, block-wise rates and ranks on the double/single blocks,
    a validation split, kohya sample prompts and the schedule-free optimizer, in one run."""
    import shutil

    from PIL import Image
    from safetensors import safe_open

    me, reg = tmp_path / "me", tmp_path / "reg"
    shutil.copytree(style_folder, me)
    shutil.copytree(style_folder, reg)
    (me / "masks").mkdir()
    for i in range(4):
        Image.new("L", (32, 32), 255).crop((0, 0, 32, 16)).resize((32, 32)).save(me / "masks" / f"{i}.png")
    config = tmp_path / "dataset.yaml"
    config.write_text(f"subsets:\n  - {{folder: {me}, repeats: 2}}\n  - {{folder: {reg}, is_reg: true}}\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square --w 32 --h 48 --s 2 --d 5\n")
    records = []
    out = tmp_path / "f.safetensors"
    cfg = TrainConfig(base=flux_base, dataset_config=str(config), output=str(out), resolution=32, steps=4,
                      batch_size=2, rank=4, alpha=4, seed=1, block_lr="double=0.5", block_ranks="single=2",
                      validation_split=0.2, validation_every=2, sample_prompts=str(prompts), sample_every=2,
                      optimizer="adamw-schedulefree", prior_loss_weight=0.5)
    train(cfg, progress=False, on_step=records.append)
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4]
    assert Image.open(tmp_path / "f-logs" / "samples" / "step_000004-00.png").size == (32, 48)
    with safe_open(str(out), "pt") as f:
        single = next(k for k in f.keys() if k.startswith("lora_unet_single_blocks_") and
                      k.endswith("linear1.lora_down.weight"))
        double = next(k for k in f.keys() if k.startswith("lora_unet_double_blocks_") and
                      k.endswith("img_attn_proj.lora_down.weight"))
        # single blocks' linear1 fuses q, k and v: three rank-2 LoRAs side by side
        assert (f.get_tensor(single).shape[0], f.get_tensor(double).shape[0]) == (6, 4)
