"""Injection into diffusers UNets and CLIP text encoders; whole-model operations."""

import random

import pytest
import torch

from conftest import randomize_lora, unet_inputs, unet_out
from lora_diffusion import (
    LoraConfig,
    UserError,
    delete_adapter,
    inject_adapter,
    lora_layers,
    merge_adapters,
    parameter_report,
    remove_lora,
    set_adapter_enabled,
    set_adapter_weight,
    unmerge_adapters,
)
from lora_diffusion.models.reference_configs import build_components
from lora_diffusion.models.tiny import tiny_components


@pytest.mark.parametrize(
    "arch, blocks",
    [("sd1", 16), ("sd2", 16), ("sdxl", 70)],  # transformer blocks in the real families
)
def test_default_targets_on_real_family_shapes(arch, blocks):
    comps = build_components(arch, device="meta")
    wrapped = inject_adapter(comps["unet"], "x", LoraConfig(rank=4))
    assert len(wrapped) == blocks * 8
    assert all(p.rsplit(".", 2)[-2] in ("attn1", "attn2", "to_out") for p in wrapped)
    text_role = "te2" if arch == "sdxl" else "te"
    te_wrapped = inject_adapter(comps[text_role], "x", LoraConfig(rank=4), kind="text")
    layers = comps[text_role].config.num_hidden_layers
    assert len(te_wrapped) == layers * 4


def test_presets_widen_targets(sd1):
    ff = inject_adapter(sd1["unet"], "ff", LoraConfig(), "attn-ff")
    assert any(p.endswith("ff.net.2") for p in ff) and any(p.endswith("proj_in") for p in ff)
    comps = tiny_components("sd1")
    full = inject_adapter(comps["unet"], "full", LoraConfig(), "full")
    assert any(p.endswith("resnets.0.conv1") for p in full)
    assert any(p.endswith("downsamplers.0.conv") for p in full)


def test_pattern_matching_nothing_is_an_error_naming_it(sd1):
    with pytest.raises(UserError, match=r"target pattern '\*attn9\.to_q' matches no Linear/Conv2d module in the unet"):
        inject_adapter(sd1["unet"], "x", LoraConfig(), ["*attn1.to_q", "*attn9.to_q"])
    assert not lora_layers(sd1["unet"])


def test_parameter_report_counts_only_lora(sd1):
    unet = sd1["unet"]
    total_before = sum(p.numel() for p in unet.parameters())
    inject_adapter(unet, "x", LoraConfig(rank=4))
    report = parameter_report(unet)
    lora = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
    assert report.trainable == lora > 0
    assert report.total == total_before + lora
    assert str(report).startswith(f"trainable params: {lora:,d} || all params: {total_before + lora:,d}")


def test_fresh_adapter_identical_then_linear_and_additive(sd1):
    unet = sd1["unet"]
    inputs = unet_inputs(unet)
    base = unet_out(unet, inputs)
    inject_adapter(unet, "a", LoraConfig(rank=4))
    inject_adapter(unet, "b", LoraConfig(rank=8, alpha=4), "attn-ff")
    assert torch.equal(unet_out(unet, inputs), base)
    randomize_lora(unet, "a", 1, 0.05)
    randomize_lora(unet, "b", 2, 0.05)

    def at(wa, wb):
        set_adapter_weight(unet, "a", wa)
        set_adapter_weight(unet, "b", wb)
        return unet_out(unet, inputs)

    assert torch.equal(at(0, 0), base)
    # the UNet is not linear in its weights, but merged-by-hand equals blended
    blended = at(0.8, -0.3)
    merge_adapters(unet)
    merged = unet_out(unet, inputs)
    assert (merged - blended).abs().max() <= 1e-5 * blended.abs().max()
    unmerge_adapters(unet)


def test_gradients_reach_only_lora(sd1):
    unet, te = sd1["unet"], sd1["te"]
    inject_adapter(unet, "a", LoraConfig(rank=4))
    inject_adapter(te, "a", LoraConfig(rank=4), kind="text")
    ids = torch.randint(3, 50, (2, 6))
    context = te(ids).last_hidden_state
    sample = torch.randn(2, 4, 8, 8)
    unet(sample, 5, context).sample.square().mean().backward()
    for model in (unet, te):
        for name, p in model.named_parameters():
            if "lora_" in name:
                assert p.requires_grad
            else:
                assert p.grad is None, name
    # B starts at zero, so only B gets a gradient on the first step (A's is zero)
    grads = [p.grad for n, p in te.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_hundred_random_operations_then_removal_restore_every_tensor(dtype):
    comps = tiny_components("sd1")
    unet = comps["unet"].to(dtype)
    original = {k: v.clone() for k, v in unet.state_dict().items()}
    inject_adapter(unet, "a", LoraConfig(rank=4, bias="lora_only"), "full")
    inject_adapter(unet, "b", LoraConfig(rank=2, bias="all"))
    randomize_lora(unet, "a", 1)
    randomize_lora(unet, "b", 2)
    rng = random.Random(1)
    for _ in range(100):
        op = rng.choice(["weight", "weight", "merge", "unmerge", "enable", "delete-readd"])
        if op == "weight":
            set_adapter_weight(unet, rng.choice("ab"), rng.uniform(-2, 2))
        elif op == "merge":
            merge_adapters(unet)
        elif op == "unmerge":
            unmerge_adapters(unet)
        elif op == "enable":
            set_adapter_enabled(unet, rng.choice("ab"), rng.random() < 0.6)
        else:
            delete_adapter(unet, "b")
            inject_adapter(unet, "b", LoraConfig(rank=2, bias="all"))
            randomize_lora(unet, "b", rng.randrange(100))
    merge_adapters(unet)
    remove_lora(unet)
    assert not lora_layers(unet)
    restored = unet.state_dict()
    assert restored.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(restored[key], tensor), key


def test_text_encoder_injection_on_both_clip_classes():
    comps = tiny_components("sdxl")
    for role in ("te1", "te2"):
        wrapped = inject_adapter(comps[role], "t", LoraConfig(rank=2), "attn-mlp", kind="text")
        assert len(wrapped) == 2 * 6
