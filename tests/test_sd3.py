"""SD3/SD3.5 as a base family on a tiny random pipeline of the real architecture (two joint blocks, CLIP-L/CLIP-G
with projections, T5): recognised, conditioned as diffusers' StableDiffusion3Pipeline, trained with the simplest
command (derived plan, flow-matching loss lowered), cached = uncached, generated with its family's defaults."""

import pytest
import torch
from PIL import Image

from conftest import family_fixed_loss, saved_tiny_base, single_file_in_its_folder
from lora_diffusion import load_adapter, pipeline_components, read_adapter, set_adapter_weight
from lora_diffusion.cli.main import main
from lora_diffusion.families import family_of, family_of_base, family_of_checkpoint
from lora_diffusion.training.config import TrainConfig
from lora_diffusion.training.trainer import train


@pytest.fixture(scope="module")
def sd3_base(tmp_path_factory):
    return saved_tiny_base(tmp_path_factory, "sd3")


def test_sd3_is_recognised_and_conditioned_as_its_pipeline_does(sd3_base):
    from lora_diffusion.families.sd3_conditioning import Sd3Encoders
    from lora_diffusion.models.loading import load_pipeline

    pipe = load_pipeline(sd3_base)
    assert family_of(pipe).name == "sd3" and family_of_base(sd3_base).name == "sd3"
    assert family_of_checkpoint({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"}).name == "sd3"
    captions = ["a red circle", "two blue squares"]
    ours = Sd3Encoders(pipe).encode(captions, torch.device("cpu"))
    states, _, pooled, _ = pipe.encode_prompt(captions, None, None, do_classifier_free_guidance=False)
    assert torch.equal(ours["states"], states) and torch.equal(ours["pooled"], pooled)


def test_the_simplest_command_trains_sd3_lowers_the_loss_and_generates(sd3_base, squares, tmp_path, capsys):
    out = tmp_path / "sd3.safetensors"
    assert main(["train", "--base", sd3_base, "--data", squares, "--output", str(out), "--steps", "40",
                 "--lr", "5e-3"]) == 0
    err = capsys.readouterr().err
    assert "plan: profile sd3 (profiles/sd3.yaml), 4 images" in err and "targets = attn  (profile sd3)" in err
    adapter = read_adapter(out)
    assert adapter.architecture() == "sd3" and adapter.rank == 16 and adapter.layout == "diffusers"
    # two joint blocks: q/k/v/out and the text stream's add_q/k/v, to_add_out only in the first (the last block is
    # context-pre-only)
    assert len(adapter.modules) == 15
    before, after = family_fixed_loss(sd3_base, squares), family_fixed_loss(sd3_base, squares, str(out))
    assert after < 0.9 * before, (before, after)
    assert main(["generate", "a square 1", "--base", sd3_base, "--lora", f"{out}:1", "--out", str(tmp_path),
                 "--seed", "3"]) == 0
    png = Image.open(next(tmp_path.glob("*.png")))
    assert "Steps: 28, Sampler: Euler, CFG scale: 3.5, Seed: 3, Size: 32x32" in png.info["parameters"]


@pytest.mark.slow  # two short training runs; FLUX's quick twin covers the path
def test_cached_and_uncached_sd3_runs_match(sd3_base, squares, tmp_path):
    runs = [train(TrainConfig(base=sd3_base, data=squares, output=str(tmp_path / f"{cache}.safetensors"), steps=4,
                              batch_size=2, lr=5e-3, cache=cache), progress=False).losses for cache in ("memory", "off")]
    # equal to float rounding: the cache encodes all captions in one batch, the uncached run two at a time, and
    # this base's text states differ by up to 5e-7 between the two batchings (measured; FLUX's and the UNet
    # families' runs match bit for bit)
    assert len(runs[0]) == 4 and runs[0][0] == runs[1][0]
    torch.testing.assert_close(torch.tensor(runs[0]), torch.tensor(runs[1]), rtol=1e-5, atol=0)


def test_diffusers_loads_our_sd3_file_with_our_transformer_output(sd3_base, squares, tmp_path):
    from lora_diffusion.models.loading import load_pipeline

    out = tmp_path / "sd3.safetensors"
    train(TrainConfig(base=sd3_base, data=squares, output=str(out), steps=6, lr=5e-2, save_dtype="fp32"), progress=False)
    ours = load_pipeline(sd3_base)
    components = pipeline_components(ours)
    set_adapter_weight(components["unet"], load_adapter(out, components), 1.0)
    theirs = load_pipeline(sd3_base)
    theirs.load_lora_weights(str(out))
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 4, 16, 16, generator=g), encoder_hidden_states=torch.randn(1, 10, 32, generator=g),
                  pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([500.0]))
    with torch.no_grad():
        a, b = ours.transformer(**inputs).sample, theirs.transformer(**inputs).sample
        base = load_pipeline(sd3_base).transformer(**inputs).sample
    assert (a - base).abs().max() > 1e-3
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sd3_kohya_layout_fuses_qkv_swaps_the_last_text_adaln_and_reads_back_exactly(sd3_base, squares, tmp_path):
    """kohya's MMDiT names (``lora_unet_joint_blocks_N_x_block_attn_qkv`` …): written on request, fused q/k/v; the
    last block's text AdaLN rows stored as (scale, shift), as SD3's original weights are; read back to the same
    transformer output as the diffusers-layout file."""
    from safetensors.torch import load_file

    from lora_diffusion.adapters.file import write_adapter
    from lora_diffusion.models.loading import load_pipeline

    out = tmp_path / "full.safetensors"
    train(TrainConfig(base=sd3_base, data=squares, output=str(out), steps=4, lr=5e-2, targets="full",
                      save_dtype="fp32"), progress=False)
    adapter = read_adapter(out)
    assert adapter.layout == "diffusers" and adapter.architecture() == "sd3"
    kohya = write_adapter(adapter, tmp_path / "kohya.safetensors", dtype="fp32", layout="kohya")
    tensors = load_file(str(kohya))
    modules = sorted({key.split(".")[0] for key in tensors})
    assert "lora_unet_joint_blocks_0_x_block_attn_qkv" in modules
    assert "lora_unet_joint_blocks_0_context_block_attn_qkv" in modules
    assert not any("to_q" in m or "add_q_proj" in m for m in modules)
    last = adapter.modules["lora_unet_transformer_blocks_1_norm1_context_linear"]
    shift, scale = last.up.float().chunk(2)
    torch.testing.assert_close(tensors["lora_unet_joint_blocks_1_context_block_adaLN_modulation_1.lora_up.weight"],
                               torch.cat([scale, shift]), rtol=0, atol=0)
    again = read_adapter(kohya)
    # the last block's text query feeds no output: never trained, all zero, so not split back out of its qkv
    assert adapter.modules["lora_unet_transformer_blocks_1_attn_add_q_proj"].up.abs().max() == 0
    assert again.layout == "kohya" and sorted(again.modules) == sorted(
        name for name, module in adapter.modules.items() if module.up.abs().max() > 0)

    def output(path):
        pipe = load_pipeline(sd3_base)
        components = pipeline_components(pipe)
        set_adapter_weight(components["unet"], load_adapter(path, components), 1.0)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            return pipe.transformer(hidden_states=torch.randn(1, 4, 16, 16, generator=g),
                                    encoder_hidden_states=torch.randn(1, 10, 32, generator=g),
                                    pooled_projections=torch.randn(1, 32, generator=g),
                                    timestep=torch.tensor([500.0])).sample

    torch.testing.assert_close(output(kohya), output(out), rtol=1e-5, atol=1e-6)


def _original_sd3_checkpoint(transformer) -> dict:
    """A diffusers SD3 transformer's weights in SD3's original single-file names (``model.diffusion_model.
    joint_blocks.N.x_block.attn.qkv`` …): the inverse of diffusers' own converter, every tensor accounted for."""
    state = {k: v.clone() for k, v in transformer.state_dict().items()}
    out, used = {}, set()

    def put(original, *names, swap=False):
        for kind in ("weight", "bias"):
            keys = [f"{n}.{kind}" for n in names]
            if all(k in state for k in keys):
                value = torch.cat([state[k] for k in keys])
                if swap:
                    first, second = value.chunk(2)
                    value = torch.cat([second, first])
                out[f"model.diffusion_model.{original}.{kind}"] = value
                used.update(keys)

    out["model.diffusion_model.pos_embed"] = state["pos_embed.pos_embed"]
    used.add("pos_embed.pos_embed")
    for original, ours in (("x_embedder.proj", "pos_embed.proj"), ("context_embedder", "context_embedder"),
                           ("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
                           ("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
                           ("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
                           ("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
                           ("final_layer.linear", "proj_out")):
        put(original, ours)
    put("final_layer.adaLN_modulation.1", "norm_out.linear", swap=True)
    last = len(transformer.transformer_blocks) - 1
    for i in range(last + 1):
        ours, original = f"transformer_blocks.{i}", f"joint_blocks.{i}"
        put(f"{original}.x_block.attn.qkv", *(f"{ours}.attn.to_{p}" for p in "qkv"))
        put(f"{original}.context_block.attn.qkv", *(f"{ours}.attn.add_{p}_proj" for p in "qkv"))
        put(f"{original}.x_block.attn.proj", f"{ours}.attn.to_out.0")
        put(f"{original}.context_block.attn.proj", f"{ours}.attn.to_add_out")
        put(f"{original}.x_block.adaLN_modulation.1", f"{ours}.norm1.linear")
        put(f"{original}.context_block.adaLN_modulation.1", f"{ours}.norm1_context.linear", swap=i == last)
        for stream, ff in (("x_block", "ff"), ("context_block", "ff_context")):
            put(f"{original}.{stream}.mlp.fc1", f"{ours}.{ff}.net.0.proj")
            put(f"{original}.{stream}.mlp.fc2", f"{ours}.{ff}.net.2")
    assert used == set(state), sorted(set(state) - used)
    return out


def test_an_sd3_single_file_beside_its_diffusers_folder_is_a_base(sd3_base, tmp_path):
    """``sd3.5_large.safetensors`` (SD3's original names) in the diffusers folder it came with: the transformer through
    diffusers' own single-file converter with the folder's config, the rest from the folder; same output."""
    _, single, pipe = single_file_in_its_folder(sd3_base, tmp_path / "sd3-folder", "sd3.5_tiny.safetensors",
                                                _original_sd3_checkpoint)
    assert family_of_base(str(single)).name == "sd3" and type(pipe).__name__ == "StableDiffusion3Pipeline"
