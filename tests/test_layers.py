"""LoRA layers on single modules: the math, merging, and exact restoration."""

import copy
import random

import pytest
import torch
from torch import nn

from lora_diffusion import LoraConfig, LoraConv2d, LoraLinear


def _set_b(layer, name, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = layer.lora_B[name].weight
        w.copy_(torch.randn(w.shape, generator=g).to(w.dtype))


def _make(kind, dtype=torch.float32):
    torch.manual_seed(0)
    if kind == "linear":
        return LoraLinear(nn.Linear(16, 12, dtype=dtype)), torch.randn(3, 16, dtype=dtype)
    if kind == "conv1":
        return LoraConv2d(nn.Conv2d(6, 5, 1, dtype=dtype)), torch.randn(2, 6, 7, 7, dtype=dtype)
    return LoraConv2d(nn.Conv2d(6, 5, 3, padding=1, stride=2, dtype=dtype)), torch.randn(2, 6, 9, 9, dtype=dtype)


KINDS = ["linear", "conv1", "conv3"]


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_adapter_is_exact_identity(kind):
    layer, x = _make(kind)
    base = layer.base_layer(x)
    layer.add_adapter("a", LoraConfig(rank=4, alpha=8))
    assert torch.equal(layer(x), base)
    assert layer.lora_A["a"].weight.abs().sum() > 0  # A random, B zero
    assert torch.count_nonzero(layer.lora_B["a"].weight) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_weight_is_linear_and_adapters_add_in_any_order(kind):
    layer, x = _make(kind)
    layer.add_adapter("a", LoraConfig(rank=4, alpha=8))
    layer.add_adapter("b", LoraConfig(rank=2, alpha=1))
    _set_b(layer, "a", 1)
    _set_b(layer, "b", 2)
    base = layer.base_layer(x)

    def out(wa, wb):
        layer.set_weight("a", wa)
        layer.set_weight("b", wb)
        with torch.no_grad():
            return layer(x)

    delta_a = out(1, 0) - base
    delta_b = out(0, 1) - base
    torch.testing.assert_close(out(0.5, 0) - base, 0.5 * delta_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out(-0.3, 0) - base, -0.3 * delta_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out(0.7, 1.5) - base, 0.7 * delta_a + 1.5 * delta_b, rtol=1e-5, atol=1e-6)
    assert torch.equal(out(0, 0), base)

    # the same two adapters added in the other order give the same output
    other, _ = _make(kind)
    other.add_adapter("b", LoraConfig(rank=2, alpha=1))
    other.add_adapter("a", LoraConfig(rank=4, alpha=8))
    other.load_state_dict(layer.state_dict())
    other.set_weight("a", 0.7)
    other.set_weight("b", 1.5)
    with torch.no_grad():
        torch.testing.assert_close(other(x), out(0.7, 1.5), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_delta_matches_formula(kind):
    layer, x = _make(kind)
    layer.add_adapter("a", LoraConfig(rank=3, alpha=6))
    _set_b(layer, "a", 3)
    layer.set_weight("a", 0.25)
    base = layer.base_layer
    expected_weight = base.weight + 0.25 * (6 / 3) * layer._product("a")
    with torch.no_grad():
        if kind == "linear":
            expected = torch.nn.functional.linear(x, expected_weight, base.bias)
        else:
            expected = torch.nn.functional.conv2d(x, expected_weight, base.bias, base.stride, base.padding)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_merged_equals_unmerged(kind):
    layer, x = _make(kind)
    layer.add_adapter("a", LoraConfig(rank=4, alpha=8))
    layer.add_adapter("b", LoraConfig(rank=4))
    _set_b(layer, "a", 1)
    _set_b(layer, "b", 2)
    layer.set_weight("b", -0.6)
    with torch.no_grad():
        unmerged = layer(x)
        layer.merge()
        merged = layer(x)
        # while merged, changing a weight still gives the right output (side path adds the difference)
        layer.set_weight("a", 0.3)
        changed_merged = layer(x)
        layer.unmerge()
        changed_unmerged = layer(x)
    assert (merged - unmerged).abs().max() <= 1e-5 * unmerged.abs().max()
    assert (changed_merged - changed_unmerged).abs().max() <= 1e-5 * changed_unmerged.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_random_sequence_restores_base_bit_identically(dtype):
    layer, x = _make("conv3", dtype)
    w0 = layer.base_layer.weight.detach().clone()
    b0 = layer.base_layer.bias.detach().clone()
    layer.add_adapter("a", LoraConfig(rank=4, bias="lora_only"))
    layer.add_adapter("b", LoraConfig(rank=2))
    _set_b(layer, "a", 1)
    _set_b(layer, "b", 2)
    with torch.no_grad():
        layer.lora_bias["a"].normal_()
    rng = random.Random(0)
    for _ in range(100):
        op = rng.choice(["weight", "merge", "unmerge", "enable"])
        if op == "weight":
            layer.set_weight(rng.choice("ab"), rng.uniform(-2, 3))
        elif op == "merge":
            layer.merge()
        elif op == "unmerge":
            layer.unmerge()
        else:
            layer.set_enabled(rng.choice("ab"), rng.random() < 0.7)
    layer.merge()
    assert not torch.equal(layer.base_layer.weight, w0)
    layer.unmerge()
    assert torch.equal(layer.base_layer.weight, w0)
    assert torch.equal(layer.base_layer.bias, b0)


def test_gaussian_init_and_dtype_device_follow_base():
    layer = LoraLinear(nn.Linear(64, 64, dtype=torch.bfloat16))
    layer.add_adapter("g", LoraConfig(rank=16, init="gaussian"))
    a = layer.lora_A["g"].weight
    assert a.dtype == torch.bfloat16 and a.device == layer.base_layer.weight.device
    assert abs(a.float().std().item() - 1 / 16) < 0.01
    layer.add_adapter("k", LoraConfig(rank=16))
    bound = 1 / 64**0.5  # kaiming_uniform(a=sqrt(5)) on fan_in 64
    assert layer.lora_A["k"].weight.float().abs().max() <= bound + 1e-3


def test_only_lora_parameters_get_gradients():
    layer, x = _make("linear")
    layer.add_adapter("a", LoraConfig(rank=4, bias="lora_only"))
    layer(x).sum().backward()
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None
    assert layer.lora_B["a"].weight.grad is not None
    assert layer.lora_bias["a"].grad is not None


def test_disabled_adapter_contributes_nothing_and_bad_config_is_refused():
    layer, x = _make("linear")
    layer.add_adapter("a", LoraConfig(rank=4))
    _set_b(layer, "a", 1)
    layer.set_enabled("a", False)
    assert torch.equal(layer(x), layer.base_layer(x))
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        LoraConfig(rank=0)
    with pytest.raises(ValueError, match="bias must be one of none, lora_only, all"):
        LoraConfig(bias="some")
    with pytest.raises(ValueError, match="already exists"):
        layer.add_adapter("a", LoraConfig())


def test_weight_changes_are_low_rank_updates_that_stay_exact():
    """Slider moves on a merged layer are cheap in-place updates; they match a fresh blend to
    float rounding every time, and the periodic fresh blend matches it bit for bit."""
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(48, 40))
    for i, name in enumerate(("a", "b", "c")):
        layer.add_adapter(name, LoraConfig(rank=4, alpha=2, bias="lora_only"))
        nn.init.normal_(layer.lora_B[name].weight, std=0.3)
        nn.init.normal_(layer.lora_bias[name], std=0.3)
    reference = copy.deepcopy(layer)
    layer.merge()
    rng = random.Random(1)
    for change in range(1, 3 * LoraLinear.REBLEND_EVERY + 1):
        name, weight = rng.choice("abc"), rng.uniform(-1.5, 2.0)
        layer.set_weight(name, weight)
        layer.merge()
        reference.set_weight(name, weight)
        reference.merge(fresh=True)
        got, want = layer.base_layer.weight, reference.base_layer.weight
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        torch.testing.assert_close(layer.base_layer.bias, reference.base_layer.bias, rtol=0, atol=1e-5)
        if change % (LoraLinear.REBLEND_EVERY + 1) == 0:
            assert torch.equal(got, want), f"change {change} should be a fresh blend"
    x = torch.randn(5, 48)
    torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-5)
    for name in "abc":
        layer.set_weight(name, 0.0)
    layer.merge()
    assert torch.equal(layer.base_layer.weight, layer._pristine[0])
    assert torch.equal(layer.base_layer.bias, layer._pristine[1])


def test_bare_while_merged_runs_the_base_modules_and_puts_the_layers_back(sd1):
    from conftest import randomize_lora, unet_inputs, unet_out
    from lora_diffusion.lora.inject import bare_while_merged, blend_adapters, inject_adapter, lora_layers

    unet = sd1["unet"]
    inject_adapter(unet, "a", LoraConfig(rank=2))
    randomize_lora(unet, "a")
    inputs = unet_inputs(unet)
    blend_adapters(unet, {"a": 0.7})
    expected = unet_out(unet, inputs)
    layers = lora_layers(unet)
    with bare_while_merged(unet) as taken:
        assert taken == len(layers) == 32 and not lora_layers(unet)
        assert torch.equal(unet_out(unet, inputs), expected)
    assert lora_layers(unet) == layers
    next(iter(layers.values())).set_weight("a", 0.2)  # one layer with an unmerged change keeps its wrapper
    with bare_while_merged(unet) as taken:
        assert taken == 31
