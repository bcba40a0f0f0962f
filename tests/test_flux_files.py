"""FLUX LoRA files as other tools write them, read by ours with the same effect: ComfyUI's ``diffusion_model.``
names (BFL paths, PEFT tensors), LyCORIS's own ``lycoris_`` prefix (SimpleTuner's LoKr files: the ``lycoris``
package is the oracle), and LyCORIS networks on BFL's fused q/k/v modules (split exactly)."""

import warnings

import pytest
import torch
from safetensors.torch import save_file

from conftest import saved_tiny_base, single_file_in_its_folder
from lora_diffusion import UserError, load_adapter, pipeline_components, read_adapter, set_adapter_weight
from lora_diffusion.adapters.file import AdapterFile, write_adapter
from lora_diffusion.adapters.modules import ModuleLora, ModuleLycoris
from lora_diffusion.families.flow_matching import image_ids
from lora_diffusion.models.loading import load_pipeline


@pytest.fixture(scope="module")
def flux_base(tmp_path_factory):
    return saved_tiny_base(tmp_path_factory, "flux")


def _inputs():
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 16, 16, generator=g), encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                img_ids=image_ids(8, 8, "cpu", torch.float32), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([1.0]))


def _ours(base, path):
    """The tiny FLUX transformer's output with ``path`` loaded by our loader at weight 1."""
    pipe = load_pipeline(base)
    components = pipeline_components(pipe)
    set_adapter_weight(components["unet"], load_adapter(path, components), 1.0)
    with torch.no_grad():
        return pipe.transformer(**_inputs()).sample


def _bfl_file(tmp_path, name="bfl.safetensors"):
    g = torch.Generator().manual_seed(3)
    modules = {
        "lora_unet_double_blocks_0_img_attn_qkv": ModuleLora(alpha=2.0, down=torch.randn(4, 16, generator=g) * 0.3,
                                                             up=torch.randn(48, 4, generator=g) * 0.3),
        "lora_unet_double_blocks_0_txt_attn_proj": ModuleLora(alpha=4.0, down=torch.randn(4, 16, generator=g) * 0.3,
                                                              up=torch.randn(16, 4, generator=g) * 0.3),
    }
    return write_adapter(AdapterFile(modules, {"ss_base_model_version": "flux1"}), tmp_path / name, dtype="fp32")


def test_comfyui_diffusion_model_names_read_as_the_same_bfl_modules(flux_base, tmp_path):
    """ComfyUI's FLUX layout (``diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight``) is the kohya/BFL
    file under other names: the same transformer output."""
    from safetensors.torch import load_file

    kohya = _bfl_file(tmp_path)
    dotted = {"lora_unet_double_blocks_0_img_attn_qkv": "double_blocks.0.img_attn.qkv",
              "lora_unet_double_blocks_0_txt_attn_proj": "double_blocks.0.txt_attn.proj"}
    renamed_tensor = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight", "alpha": "alpha"}
    comfy = {}
    for key, value in load_file(str(kohya)).items():
        module, tensor = key.split(".", 1)
        comfy[f"diffusion_model.{dotted[module]}.{renamed_tensor[tensor]}"] = value
    save_file(comfy, str(tmp_path / "comfy.safetensors"))
    adapter = read_adapter(tmp_path / "comfy.safetensors")
    assert sorted(adapter.modules) == sorted(read_adapter(kohya).modules) == [
        "lora_unet_transformer_blocks_0_attn_to_add_out", "lora_unet_transformer_blocks_0_attn_to_k",
        "lora_unet_transformer_blocks_0_attn_to_q", "lora_unet_transformer_blocks_0_attn_to_v"]
    base = load_pipeline(flux_base)
    with torch.no_grad():
        untouched = base.transformer(**_inputs()).sample
    ours_kohya, ours_comfy = _ours(flux_base, kohya), _ours(flux_base, tmp_path / "comfy.safetensors")
    assert (ours_kohya - untouched).abs().max() > 1e-2
    torch.testing.assert_close(ours_comfy, ours_kohya, rtol=0, atol=0)


def test_a_lokr_on_a_fused_qkv_module_splits_exactly_into_q_k_v(flux_base, tmp_path):
    """kohya's LyCORIS networks on FLUX name the fused ``img_attn_qkv``: its ΔW is split by rows, exactly, and the
    transformer output equals the base with that ΔW added to q, k and v by hand."""
    g = torch.Generator().manual_seed(4)
    lokr = ModuleLycoris(network_kind="lokr", alpha=2.0, factors={
        "lokr_w1": torch.randn(3, 4, generator=g), "lokr_w2_a": torch.randn(16, 2, generator=g) * 0.3,
        "lokr_w2_b": torch.randn(2, 4, generator=g) * 0.3})
    lokr.diff_b = torch.randn(48, generator=g) * 0.1
    path = tmp_path / "lokr.safetensors"
    write_adapter(AdapterFile({"lora_unet_double_blocks_0_img_attn_qkv": lokr}, {"ss_base_model_version": "flux1"}),
                  path, dtype="fp32")
    adapter = read_adapter(path)
    delta = lokr.delta()
    assert delta.shape == (48, 16)
    for i, part in enumerate("qkv"):
        module = adapter.modules[f"lora_unet_transformer_blocks_0_attn_to_{part}"]
        assert module.kind == "full"
        torch.testing.assert_close(module.delta(), delta[16 * i:16 * (i + 1)], rtol=0, atol=0)
        torch.testing.assert_close(module.diff_b, lokr.diff_b[16 * i:16 * (i + 1)], rtol=0, atol=0)
    by_hand = load_pipeline(flux_base)
    attn = by_hand.transformer.transformer_blocks[0].attn
    with torch.no_grad():
        for i, linear in enumerate((attn.to_q, attn.to_k, attn.to_v)):
            linear.weight += delta[16 * i:16 * (i + 1)]
            linear.bias += lokr.diff_b[16 * i:16 * (i + 1)]
        expected = by_hand.transformer(**_inputs()).sample
    torch.testing.assert_close(_ours(flux_base, path), expected, rtol=1e-4, atol=1e-5)


def test_a_fused_dora_module_is_refused_in_one_line(tmp_path):
    module = ModuleLora(alpha=1.0, down=torch.ones(2, 16), up=torch.ones(48, 2), dora_scale=torch.ones(48, 1))
    path = write_adapter(AdapterFile({"lora_unet_double_blocks_0_img_attn_qkv": module},
                                     {"ss_base_model_version": "flux1"}), tmp_path / "dora.safetensors", dtype="fp32")
    with pytest.raises(UserError) as error:
        read_adapter(path)
    assert str(error.value) == (f"{path}: module lora_unet_double_blocks_0_img_attn_qkv is a fused FLUX module with "
                                "DoRA, which cannot be split into q/k/v exactly; save it with split q/k/v (diffusers "
                                "layout) instead")


def test_a_lycoris_lokr_file_as_simpletuner_saves_it_gives_lycoris_own_output(flux_base, tmp_path):
    """SimpleTuner trains FLUX LoKr with the ``lycoris`` package on diffusers' transformer and saves its
    ``lycoris_transformer_blocks_…`` names; ours loads the file and matches the package's own forward."""
    lycoris = pytest.importorskip("lycoris")
    theirs = load_pipeline(flux_base)
    lycoris.LycorisNetwork.apply_preset({"target_module": ["FluxAttention", "Attention"]})
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = lycoris.create_lycoris(theirs.transformer, 1.0, linear_dim=4, linear_alpha=2, algo="lokr", factor=4)
    net.apply_to()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        reference = theirs.transformer(**_inputs()).sample
    path = tmp_path / "simpletuner-lokr.safetensors"
    net.save_weights(str(path), torch.float32, {})
    adapter = read_adapter(path)
    assert adapter.networks == ["lokr"] and adapter.architecture() == "flux"
    assert "lora_unet_transformer_blocks_0_attn_to_q" in adapter.modules
    torch.testing.assert_close(_ours(flux_base, path), reference, rtol=1e-4, atol=1e-5)


def test_a_dit_single_file_base_without_its_folder_is_one_line(tmp_path, squares, capsys):
    """A FLUX.1 or SD3 transformer file needs the diffusers folder it came in: outside one, one line says so."""
    from lora_diffusion.cli.main import main

    sd3 = tmp_path / "sd3.5_large.safetensors"
    save_file({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(2, 2)}, str(sd3))
    flux = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2)}, str(flux))
    for path, label in ((sd3, "SD3.x"), (flux, "FLUX.1")):
        assert main(["train", "--base", str(path), "--data", squares, "--output", str(tmp_path / "o.safetensors")]) != 0
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"error: base {path}: a {label} transformer on its own; its text encoders, tokenizers and VAE come from "
            f"the diffusers folder it sits in (model_index.json beside it, as in the official repositories), and "
            f"{tmp_path} is not one: put the file in the model's diffusers folder, or use the folder as --base")


def _bfl_checkpoint(transformer) -> dict[str, torch.Tensor]:
    """A diffusers FLUX transformer's weights in BFL names (the inverse of ``flux_checkpoint.to_diffusers``)."""
    from lora_diffusion.models.flux_checkpoint import BLOCKS, GLOBAL, TENSORS

    state = transformer.state_dict()
    inverse_tensor = {"weight": ("weight", "scale"), "bias": ("bias",)}
    out = {}
    for bfl, ours in GLOBAL.items():
        for kind in ("weight", "bias"):
            if f"{ours}.{kind}" in state:
                value = state[f"{ours}.{kind}"]
                if bfl.startswith("final_layer.ada"):
                    scale, shift = value.chunk(2)
                    value = torch.cat([shift, scale])
                out[f"{bfl}.{kind}"] = value
    counts = {"transformer_blocks": len(transformer.transformer_blocks),
              "single_transformer_blocks": len(transformer.single_transformer_blocks)}
    for bfl_block, (ours, table) in BLOCKS.items():
        for i in range(counts[ours]):
            for leaf, targets in table.items():
                for kind, names in inverse_tensor.items():
                    keys = [f"{ours}.{i}.{t}.{kind}" for t in targets]
                    if all(k in state for k in keys):
                        name = "scale" if leaf.endswith("_norm") else names[0]
                        out[f"{bfl_block}.{i}.{leaf}.{name}"] = torch.cat([state[k] for k in keys])
    assert TENSORS["scale"] == "weight"
    return out


def test_our_bfl_conversion_equals_diffusers_converter_at_flux_real_widths():
    """diffusers' own converter (``convert_flux_transformer_checkpoint_to_diffusers``, which assumes FLUX.1's
    widths) and ours give the same tensors under the same names: one double and one single block at FLUX.1's
    real row counts, one column wide (the converters only move rows)."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from lora_diffusion.models.flux_checkpoint import to_diffusers

    rows = {"time_in.in_layer": 3072, "time_in.out_layer": 3072, "vector_in.in_layer": 3072,
            "vector_in.out_layer": 3072, "guidance_in.in_layer": 3072, "guidance_in.out_layer": 3072,
            "txt_in": 3072, "img_in": 3072, "final_layer.linear": 64, "final_layer.adaLN_modulation.1": 6144,
            "double_blocks.0.img_mod.lin": 18432, "double_blocks.0.txt_mod.lin": 18432,
            "double_blocks.0.img_attn.qkv": 9216, "double_blocks.0.txt_attn.qkv": 9216,
            "double_blocks.0.img_attn.proj": 3072, "double_blocks.0.txt_attn.proj": 3072,
            "double_blocks.0.img_mlp.0": 12288, "double_blocks.0.img_mlp.2": 3072,
            "double_blocks.0.txt_mlp.0": 12288, "double_blocks.0.txt_mlp.2": 3072,
            "single_blocks.0.modulation.lin": 9216, "single_blocks.0.linear1": 21504, "single_blocks.0.linear2": 3072}
    g = torch.Generator().manual_seed(0)
    checkpoint = {}
    for module, n in rows.items():
        checkpoint[f"model.diffusion_model.{module}.weight"] = torch.randn(n, 1, generator=g)
        checkpoint[f"model.diffusion_model.{module}.bias"] = torch.randn(n, generator=g)
    for norm in ("double_blocks.0.img_attn.norm", "double_blocks.0.txt_attn.norm", "single_blocks.0.norm"):
        for which in ("query_norm", "key_norm"):
            checkpoint[f"{norm}.{which}.scale"] = torch.randn(128, generator=g)
    ours = to_diffusers(dict(checkpoint))
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(checkpoint))
    # 23 modules with weight and bias, three of them fused (two q/k/v, one q/k/v/MLP: 7 more), and 6 norm scales
    assert sorted(ours) == sorted(theirs) and len(ours) == 2 * (23 + 7) + 6
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def test_a_flux_single_file_beside_its_diffusers_folder_is_a_base(flux_base, squares, tmp_path):
    """``flux1-dev.safetensors`` (BFL names) inside the diffusers folder it came with, as the official repositories
    ship them: the transformer from the file, the rest from the folder; the same output as the folder's own
    transformer, recognised as FLUX without loading, and trainable."""
    import shutil

    from lora_diffusion.cli.main import main
    from lora_diffusion.families import family_of_base

    reference, single, pipe = single_file_in_its_folder(flux_base, tmp_path / "FLUX.1-dev", "flux1-dev.safetensors",
                                                        _bfl_checkpoint)
    assert family_of_base(str(single)).name == "flux"
    with torch.no_grad():
        # the same weights; split views start mid-buffer, which the CPU's matmul may round differently
        torch.testing.assert_close(pipe.transformer(**_inputs()).sample, reference.transformer(**_inputs()).sample,
                                   rtol=1e-5, atol=1e-6)
    out = tmp_path / "single.safetensors"
    assert main(["train", "--base", str(single), "--data", squares, "--output", str(out), "--steps", "2"]) == 0
    assert read_adapter(out).architecture() == "flux"
    lonely = tmp_path / "alone" / "flux1-dev.safetensors"
    lonely.parent.mkdir()
    shutil.copy(single, lonely)
    with pytest.raises(UserError, match="a FLUX.1 transformer on its own; its text encoders, tokenizers and VAE come "
                                        "from the diffusers folder it sits in"):
        load_pipeline(str(lonely))
