"""Adapter files: kohya layout, metadata, size, validation before any change."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import randomize_lora, unet_inputs, unet_out
from lora_diffusion import (
    LoraConfig,
    UserError,
    inject_adapter,
    load_adapter,
    lora_layers,
    read_adapter,
    remove_lora,
    save_adapter,
)
from lora_diffusion.adapters.apply import extract_adapter
from lora_diffusion.models.reference_configs import build_components
from lora_diffusion.models.tiny import tiny_components


def _trained(arch="sd1", seed=0, te=True):
    comps = tiny_components(arch, seed=seed)
    inject_adapter(comps["unet"], "style", LoraConfig(rank=4, alpha=2))
    randomize_lora(comps["unet"], "style", 1, 0.05)
    if te:
        for role in [r for r in comps if r.startswith("te")]:
            inject_adapter(comps[role], "style", LoraConfig(rank=4, alpha=2), kind="text")
            randomize_lora(comps[role], "style", 2, 0.05)
    return comps


def test_kohya_key_layout_and_metadata(tmp_path):
    comps = _trained()
    path = save_adapter(tmp_path / "style.safetensors", comps, "style", metadata={"ss_output_name": "style"})
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        dtypes = {f.get_tensor(k).dtype for k in keys if not k.endswith(".alpha")}
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in keys
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha" in keys
    # canonical text-encoder names, although transformers 5 has no `text_model.` level here
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in keys
    assert not any(k.startswith("lora_te_encoder_") for k in keys)
    assert dtypes == {torch.float16}
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2"
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["lora_diffusion.base"] == "sd1" and len(meta["lora_diffusion.base_fingerprint"]) == 16
    assert json.loads(meta["lora_diffusion.targets"])["unet"] == [
        "attn1.to_k", "attn1.to_out.0", "attn1.to_q", "attn1.to_v",
        "attn2.to_k", "attn2.to_out.0", "attn2.to_q", "attn2.to_v",
    ]
    assert meta["ss_output_name"] == "style"


@pytest.mark.parametrize("dtype, torch_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_save_dtype_selectable(tmp_path, dtype, torch_dtype):
    comps = _trained(te=False)
    path = save_adapter(tmp_path / "a.safetensors", comps, "style", dtype=dtype)
    adapter = read_adapter(path)
    assert {m.down.dtype for m in adapter.modules.values()} == {torch_dtype}


def test_round_trip_gives_identical_outputs(tmp_path):
    comps = _trained("sd1")
    for module in comps.values():  # make the trained adapter exactly representable in fp16
        for layer in lora_layers(module).values():
            for store in (layer.lora_A, layer.lora_B):
                with torch.no_grad():
                    store["style"].weight.copy_(store["style"].weight.half().float())
    ids = torch.randint(3, 50, (2, 6))
    inputs = unet_inputs(comps["unet"])
    with torch.no_grad():
        te_out = comps["te"](ids).last_hidden_state
    out = unet_out(comps["unet"], inputs)
    path = save_adapter(tmp_path / "style.safetensors", comps, "style")

    fresh = tiny_components("sd1", seed=0)
    name = load_adapter(path, fresh)
    assert name == "style"
    with torch.no_grad():
        assert torch.equal(fresh["te"](ids).last_hidden_state, te_out)
    assert torch.equal(unet_out(fresh["unet"], inputs), out)
    # loaded for inference: nothing trainable unless asked
    assert not any(p.requires_grad for n, p in fresh["unet"].named_parameters() if "lora_" in n)


def test_sdxl_components_use_te1_te2_prefixes(tmp_path):
    comps = _trained("sdxl")
    path = save_adapter(tmp_path / "xl.safetensors", comps, "style")
    adapter = read_adapter(path)
    assert adapter.components == ["te1", "te2", "unet"]
    assert adapter.architecture() == "sdxl"
    fresh = tiny_components("sdxl")
    load_adapter(path, fresh, "xl")
    assert len(lora_layers(fresh["te2"])) == 8


def test_sd15_rank4_attention_adapter_is_at_most_3_5_mb():
    comps = build_components("sd1", device="meta")
    inject_adapter(comps["unet"], "a", LoraConfig(rank=4))
    inject_adapter(comps["te"], "a", LoraConfig(rank=4), kind="text")
    adapter = extract_adapter(comps, "a")
    fp16_bytes = adapter.tensor_bytes() // 2  # extracted at the model dtype (fp32): half in fp16
    alphas = len(adapter.modules) * 4
    header = sum(len(k) + 60 for k in adapter.modules) * 3  # generous per-tensor header entry
    total = fp16_bytes + alphas + header
    assert len(adapter.modules) == 128 + 48
    assert fp16_bytes == 2 * (797_184 + 294_912)
    assert total <= 3.5e6, total


def _model_state(comps):
    return {role: {k: v.clone() for k, v in m.state_dict().items()} for role, m in comps.items()}


def _assert_untouched(comps, before):
    for role, model in comps.items():
        assert not lora_layers(model)
        after = model.state_dict()
        assert after.keys() == before[role].keys()
        assert all(torch.equal(after[k], v) for k, v in before[role].items())


def test_wrong_architecture_is_refused_and_model_untouched(tmp_path):
    sd2_file = save_adapter(tmp_path / "sd2.safetensors", _trained("sd2"), "style")
    target = tiny_components("sd1")
    before = _model_state(target)
    with pytest.raises(UserError) as err:
        load_adapter(sd2_file, target)
    message = str(err.value)
    assert "does not fit the base model" in message and "lora_" in message
    assert "this LoRA was made for SD2.x; the loaded base is SD1.x" in message
    _assert_untouched(target, before)

    xl_file = save_adapter(tmp_path / "xl.safetensors", _trained("sdxl"), "style")
    with pytest.raises(UserError, match="this LoRA was made for SDXL; the loaded base is SD1.x"):
        load_adapter(xl_file, target)
    _assert_untouched(target, before)


def test_shape_mismatch_names_first_module_and_changes_nothing(tmp_path):
    comps = _trained("sd1")
    tensors = {}
    with safe_open(str(save_adapter(tmp_path / "a.safetensors", comps, "style")), "pt") as f:
        meta = f.metadata()
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    bad = "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    tensors[f"{bad}.lora_down.weight"] = torch.zeros(4, 100, dtype=torch.float16)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    target = tiny_components("sd1")
    before = _model_state(target)
    with pytest.raises(UserError, match=f"module {bad} has lora_down \\(4, 100\\)"):
        load_adapter(tmp_path / "bad.safetensors", target)
    _assert_untouched(target, before)


def test_non_safetensors_and_garbage_are_refused(tmp_path):
    pickle_file = tmp_path / "lora.pt"
    torch.save({"x": torch.zeros(1)}, pickle_file)
    with pytest.raises(UserError, match="not a .safetensors file; only safetensors adapters are loaded"):
        read_adapter(pickle_file)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(UserError, match="not a valid safetensors file"):
        read_adapter(garbage)
    odd = tmp_path / "odd.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(2)}, str(odd))
    with pytest.raises(UserError, match="a full model checkpoint, not a LoRA; use it as --base"):
        read_adapter(odd)
    save_file({"weird.x": torch.zeros(2)}, str(odd))
    with pytest.raises(UserError, match="'weird.x' is in none of the LoRA layouts read here"):
        read_adapter(odd)
    loha = tmp_path / "loha.safetensors"
    save_file({"lora_unet_x.hada_w1_a": torch.zeros(2, 2)}, str(loha))
    with pytest.raises(UserError, match="module lora_unet_x is a LoHa module without hada_w1_b; the file is incomplete"):
        read_adapter(loha)


def test_bias_delta_round_trips_as_diff_b(tmp_path):
    comps = tiny_components("sd1")
    inject_adapter(comps["unet"], "b", LoraConfig(rank=2, bias="lora_only"))
    randomize_lora(comps["unet"], "b", 3)
    inputs = unet_inputs(comps["unet"])
    for layer in lora_layers(comps["unet"]).values():
        for p in [*layer.lora_A.parameters(), *layer.lora_B.parameters(), *layer.lora_bias.parameters()]:
            with torch.no_grad():
                p.copy_(p.half().float())
    out = unet_out(comps["unet"], inputs)
    path = save_adapter(tmp_path / "b.safetensors", {"unet": comps["unet"]}, "b")
    assert any(m.diff_b is not None for m in read_adapter(path).modules.values())
    remove_lora(comps["unet"])
    load_adapter(path, {"unet": comps["unet"]})
    assert torch.equal(unet_out(comps["unet"], inputs), out)
