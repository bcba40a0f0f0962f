"""FLUX LoRA files as other tools write them, read by ours with the same effect: ComfyUI's ``diffusion_model.``
names (BFL paths, PEFT tensors), LyCORIS's own ``lycoris_`` prefix (SimpleTuner's LoKr files: the ``lycoris``
package is the oracle), and LyCORIS networks on BFL's fused q/k/v modules (split exactly)."""

import warnings

import pytest
import torch
from safetensors.torch import save_file

from conftest import saved_tiny_base
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


@pytest.mark.parametrize("key, label", [("double_blocks.0.img_attn.qkv.weight", "FLUX.1"),
                                        ("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "SD3.x")])
def test_a_dit_single_file_base_is_one_line_pointing_at_its_diffusers_folder(tmp_path, squares, capsys, key, label):
    from lora_diffusion.cli.main import main

    path = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(2, 2)}, str(path))
    assert main(["train", "--base", str(path), "--data", squares, "--output", str(tmp_path / "o.safetensors")]) != 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: base {path}: a {label} checkpoint in its original single-file layout, which is not read yet; use the "
        "diffusers folder of the same model (the official repositories ship one beside the single file: the folder "
        "with model_index.json)")
