"""LyCORIS (LoHa, LoKr, full, Tucker) and DoRA adapters: read, blend, merge, train — against the
`lycoris-lora` package and PEFT as oracles."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import unet_inputs, unet_out
from lora_diffusion import UserError
from lora_diffusion.adapters.apply import load_adapter, pipeline_components
from lora_diffusion.adapters.file import read_adapter
from lora_diffusion.adapters.naming import canonical_kohya_name, kohya_name
from lora_diffusion.cli.main import main
from lora_diffusion.lora.inject import lora_layers
from lora_diffusion.models.tiny import tiny_pipeline

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# attention, resnet blocks and conv_in/conv_out of the UNet, attention of the text encoder: linears,
# 1×1 and 3×3 convs (LyCORIS's own "full" preset names time_embedding twice on a diffusers UNet). LyCORIS matches
# class names exactly: transformers 4.x builds CLIPSdpaAttention where 5.x builds CLIPAttention.
PRESET = {"enable_conv": True, "unet_target_module": ["Transformer2DModel", "ResnetBlock2D"],
          "unet_target_name": ["conv_in", "conv_out"],
          "text_encoder_target_module": ["CLIPAttention", "CLIPSdpaAttention"],
          "text_encoder_target_name": []}

CASES = {
    "loha": ("loha", dict(network_dim=4, network_alpha=2)),
    "loha-tucker-conv": ("loha", dict(network_dim=4, network_alpha=2, conv_dim=4, conv_alpha=2, use_tucker=True)),
    "lokr": ("lokr", dict(network_dim=4, network_alpha=2)),
    "lokr-decomposed": ("lokr", dict(network_dim=2, network_alpha=1, decompose_both=True, factor=8)),
    "lokr-tucker-conv": ("lokr", dict(network_dim=2, network_alpha=1, conv_dim=2, conv_alpha=1, use_tucker=True)),
    "locon-tucker-conv": ("locon", dict(network_dim=4, network_alpha=2, conv_dim=4, conv_alpha=2, use_tucker=True)),
    "full": ("full", dict(network_dim=4, network_alpha=2)),
    "lora-dora": ("locon", dict(network_dim=4, network_alpha=2, dora_wd=True)),
    "loha-dora": ("loha", dict(network_dim=4, network_alpha=2, dora_wd=True)),
}


def _lycoris_network(pipe, algo, settings, seed=0):
    """A LyCORIS network on ``pipe`` (applied: its forward is the reference) with random weights."""
    lycoris_kohya.PRESET["lora-diffusion-test"] = PRESET
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        settings = dict(settings)
        net = lycoris_kohya.create_network(1.0, settings.pop("network_dim"), settings.pop("network_alpha"), pipe.vae,
                                           pipe.text_encoder, pipe.unet, algo=algo, preset="lora-diffusion-test", **settings)
    net.apply_to(pipe.text_encoder, pipe.unet, True, True)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "dora_scale" in name:
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))
            elif algo == "full":  # its parameters are the whole tuned weights: a small change of them
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def _reference_delta(module, w0):
    """ΔW of one LyCORIS module at multiplier 1, as its forward computes it."""
    kind = type(module).__name__
    if kind.startswith(("Loha", "Lokr")):
        delta = module.get_weight(module.shape) * module.scalar  # (its merge_to scales these twice)
    elif kind.startswith("Full"):
        delta = module.get_diff_weight(1)[0]
    else:
        delta = module.get_diff_weight(1, module.shape)[0]
    delta = delta.reshape(w0.shape).float()
    if getattr(module, "wd", False):
        delta = module.apply_weight_decompose(w0 + delta, 1) - w0
    return delta


def _our_layer(components, lora_name):
    component = "unet" if lora_name.startswith("lora_unet_") else "te"
    layers = {kohya_name(component, path): layer for path, layer in lora_layers(components[component]).items()}
    return layers[canonical_kohya_name(lora_name)]


@pytest.mark.parametrize("case", list(CASES))
def test_lycoris_files_give_the_reference_delta_and_unet_output(case, tmp_path):
    algo, settings = CASES[case]
    reference = tiny_pipeline("sd1")
    net = _lycoris_network(reference, algo, settings)
    path = tmp_path / f"{case}.safetensors"
    net.save_weights(str(path), torch.float32, {})
    suffixes = {key.split(".", 1)[1] for key in load_file(str(path))}
    expected = {"loha-tucker-conv": "hada_t1", "lokr-decomposed": "lokr_w1_a", "lokr-tucker-conv": "lokr_t2",
                "locon-tucker-conv": "lora_mid.weight", "lora-dora": "dora_scale", "full": "diff"}
    assert expected.get(case, "alpha") in suffixes  # the variant under test is really in the file

    ours = tiny_pipeline("sd1")
    components = pipeline_components(ours)
    name = load_adapter(path, components)
    modules = net.unet_loras + net.text_encoder_loras
    assert len(modules) == 87
    for module in modules:
        layer = _our_layer(components, module.lora_name)
        w0 = layer.base_layer.weight.detach().float()
        torch.testing.assert_close(layer.delta_weight(name), _reference_delta(module, w0), rtol=1e-5, atol=1e-6)

    inputs = unet_inputs(ours.unet)
    torch.testing.assert_close(unet_out(ours.unet, inputs), unet_out(reference.unet, inputs), rtol=1e-4, atol=1e-5)
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        torch.testing.assert_close(ours.text_encoder(ids)[0], reference.text_encoder(ids)[0], rtol=1e-4, atol=1e-5)


def test_peft_dora_matches_our_dora_forward(tmp_path):
    """PEFT's DoRA (use_dora=True, magnitude per output channel) on a tiny UNet, saved and read back."""
    from peft import LoraConfig as PeftConfig, get_peft_model, get_peft_model_state_dict

    pipe = tiny_pipeline("sd1")
    targets = ["to_q", "to_k", "to_v", "to_out.0", "conv1"]
    model = get_peft_model(pipe.unet, PeftConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_magnitude_vector" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    model.eval()
    state = get_peft_model_state_dict(model)
    assert any(k.endswith("lora_magnitude_vector") for k in state)
    path = tmp_path / "adapter_model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"lora_alpha": 8, "r": 4, "use_dora": True}))

    ours = tiny_pipeline("sd1")
    load_adapter(path, {"unet": ours.unet})
    inputs = unet_inputs(ours.unet)
    with torch.no_grad():
        expected = model(*inputs).sample
    torch.testing.assert_close(unet_out(ours.unet, inputs), expected, rtol=1e-4, atol=1e-5)
    assert read_adapter(path).dora


def _weights(components):
    """Every base Linear/Conv weight and bias by its unwrapped path."""
    from lora_diffusion.lora.inject import base_modules

    return {f"{c}.{path}.{k}": v.detach().clone() for c, m in components.items() for path, module in base_modules(m)
            for k, v in module.named_parameters(recurse=False)}


def test_blending_a_loha_and_a_lora_equals_a_hand_merge_and_weight_zero_is_the_base(tmp_path):
    loha = tmp_path / "loha.safetensors"
    _lycoris_network(tiny_pipeline("sd1"), *CASES["loha"]).save_weights(str(loha), torch.float32, {})
    dora = tmp_path / "dora.safetensors"
    _lycoris_network(tiny_pipeline("sd1"), *CASES["lora-dora"], seed=5).save_weights(str(dora), torch.float32, {})
    plain = tmp_path / "plain.safetensors"
    _lycoris_network(tiny_pipeline("sd1"), "locon", dict(network_dim=2, network_alpha=1), seed=7).save_weights(
        str(plain), torch.float32, {})

    pipe = tiny_pipeline("sd1")
    components = pipeline_components(pipe)
    base = {path: layer.weight.detach().clone() for path, layer in pipe.unet.named_modules()
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d))}
    before = _weights(components)
    from lora_diffusion import merge_adapters, set_adapter_weight, unmerge_adapters

    a = load_adapter(loha, components, weight=0.6)
    b = load_adapter(plain, components, weight=-0.3)
    c = load_adapter(dora, components, weight=0.5)
    inputs = unet_inputs(pipe.unet)
    unmerged = unet_out(pipe.unet, inputs)
    merge_adapters(pipe.unet)
    for path, layer in lora_layers(pipe.unet).items():
        w0 = base[path].float()
        expected = w0.clone()
        for adapter, weight in ((a, 0.6), (b, -0.3), (c, 0.5)):
            if adapter in layer.rank:
                expected += weight * layer.delta_weight(adapter)
        torch.testing.assert_close(layer.base_layer.weight, expected, rtol=1e-5, atol=1e-6)
        if c in layer.rank:  # DoRA at full strength has the magnitude as its row norms
            full = layer.delta_weight(c) + w0
            norm = full.reshape(full.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (w0.dim() - 1))
            torch.testing.assert_close(norm.flatten(), layer.lora_magnitude[c].flatten(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(unet_out(pipe.unet, inputs), unmerged, rtol=1e-4, atol=1e-5)
    for weights in ((1.0, 0.2, -1.0), (0.0, 0.7, 0.3), (0.0, 0.0, 0.0)):
        for adapter, weight in zip((a, b, c), weights):
            set_adapter_weight(pipe.unet, adapter, weight)
        merge_adapters(pipe.unet)
    after = _weights(components)
    assert all(torch.equal(after[k], before[k]) for k in before)
    unmerge_adapters(pipe.unet)
    assert all(torch.equal(v, before[k]) for k, v in _weights(components).items())


def _corrupt(tmp_path, name, change):
    tensors = load_file(str(tmp_path / "loha.safetensors"))
    change(tensors)
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("rank", lambda t: t.update({"lora_unet_conv_in.hada_w1_b": torch.zeros(3, 36)}),
         "module lora_unet_conv_in: hada_w1_a (32, 4) and hada_w1_b (3, 36) have different ranks; the file is corrupt"),
        ("unknown", lambda t: t.update({"lora_unet_conv_in.hada_w3_a": torch.zeros(2)}),
         "module lora_unet_conv_in: tensor lora_unet_conv_in.hada_w3_a is not a loha tensor"),
        ("missing", lambda t: t.pop("lora_unet_conv_in.hada_w2_b"),
         "module lora_unet_conv_in is a LoHa module without hada_w2_b; the file is incomplete"),
        ("shape", lambda t: t.update({"lora_unet_conv_out.hada_w1_b": torch.zeros(4, 12),
                                      "lora_unet_conv_out.hada_w2_b": torch.zeros(4, 12)}),
         "module lora_unet_conv_out has a loha weight change of shape (4, 12) but the base layer is (4, 32, 3, 3)"),
        ("dora", lambda t: t.update({"lora_unet_conv_in.dora_scale": torch.ones(5, 1, 1, 1)}),
         "module lora_unet_conv_in: dora_scale (5, 1, 1, 1) fits neither the output nor the input axis"),
    ],
)
def test_bad_lycoris_files_are_one_line_and_nothing_is_applied(name, change, message, tmp_path):
    _lycoris_network(tiny_pipeline("sd1"), *CASES["loha"]).save_weights(str(tmp_path / "loha.safetensors"), torch.float32, {})
    path = _corrupt(tmp_path, name, change)
    pipe = tiny_pipeline("sd1")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        load_adapter(path, pipeline_components(pipe))
    assert "\n" not in str(error.value)
    assert not lora_layers(pipe.unet) and not lora_layers(pipe.text_encoder)


def test_merge_resize_inspect_and_convert_say_what_they_accept(tmp_path, capsys):
    loha = tmp_path / "loha.safetensors"
    _lycoris_network(tiny_pipeline("sd1"), *CASES["loha"]).save_weights(str(loha), torch.float32, {})
    dora = tmp_path / "dora.safetensors"
    _lycoris_network(tiny_pipeline("sd1"), *CASES["lora-dora"]).save_weights(str(dora), torch.float32, {})

    assert main(["inspect", str(loha), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["network"], info["dora"], info["rank"], info["modules"]) == ("loha", False, 4, 87)
    assert main(["inspect", str(dora), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dora"] is True

    # exact merge: LoHa modules become full diffs equal to 0.5·ΔW
    assert main(["merge", f"{loha}:0.5", "--out", str(tmp_path / "m.safetensors"), "--dtype", "fp32"]) == 0
    assert "kept exactly as full weight differences" in capsys.readouterr().out
    source, merged = read_adapter(loha), read_adapter(tmp_path / "m.safetensors")
    assert merged.networks == ["full"]
    for key, module in source.modules.items():
        torch.testing.assert_close(merged.modules[key].delta().flatten(1), 0.5 * module.delta().flatten(1))
    # resize: an SVD LoRA of the LoHa's ΔW (rank 8 holds the rank ≤ 16 Hadamard product only approximately)
    assert main(["resize", str(loha), "--rank", "16", "--out", str(tmp_path / "r.safetensors"), "--dtype", "fp32"]) == 0
    resized = read_adapter(tmp_path / "r.safetensors")
    assert resized.networks == ["lora"] and resized.metadata.get("ss_network_module") != "lycoris.kohya"
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    torch.testing.assert_close(resized.modules[key].delta(), source.modules[key].delta(), rtol=1e-4, atol=1e-5)
    capsys.readouterr()
    for argv in (["merge", str(dora), "--out", str(tmp_path / "x.safetensors")],
                 ["resize", str(dora), "--rank", "2", "--out", str(tmp_path / "x.safetensors")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "is a DoRA adapter" in err and "not add up" in err and "bake" in err and "\n" not in err
    assert not (tmp_path / "x.safetensors").exists()
    assert main(["convert", str(loha), str(tmp_path / "d.safetensors"), "--format", "diffusers"]) == 2
    assert "is a loha module, which the diffusers layout cannot hold" in capsys.readouterr().err
    # DoRA converts to diffusers/PEFT (lora_magnitude_vector) and back without change
    assert main(["convert", str(dora), str(tmp_path / "d.safetensors"), "--format", "diffusers", "--dtype", "fp32"]) == 0
    assert main(["convert", str(tmp_path / "d.safetensors"), str(tmp_path / "k.safetensors"), "--format", "kohya",
                 "--dtype", "fp32"]) == 0
    back, original = read_adapter(tmp_path / "k.safetensors"), read_adapter(dora)
    for key, module in original.modules.items():
        assert torch.equal(back.modules[key].dora_scale, module.dora_scale)
        torch.testing.assert_close(back.modules[key].delta(), module.delta())


@pytest.fixture
def squares(style_folder):
    """The trainer tests' four captioned squares (this module's LoRA-file tests above use them too)."""
    return style_folder


@pytest.mark.parametrize("network, dora", [("loha", False), ("lokr", False), ("lora", True)])
def test_training_each_network_lowers_the_loss_and_lycoris_reads_the_file(network, dora, tiny_base, squares, tmp_path):
    from test_train import _cfg, _fixed_loss

    from lora_diffusion.models.loading import load_pipeline
    from lora_diffusion.training.trainer import train

    out = tmp_path / f"{network}.safetensors"
    train(_cfg(tiny_base, squares, out, steps=30, rank=4, network=network, dora=dora), progress=False)
    assert _fixed_loss(tiny_base, squares, out, 1.0) < _fixed_loss(tiny_base, squares, out, 0.0)
    adapter = read_adapter(out)
    assert adapter.networks == [network] and adapter.dora == dora
    assert adapter.metadata["ss_network_module"] == "lycoris.kohya"
    assert json.loads(adapter.metadata["ss_network_args"])["algo"] == {"lora": "locon"}.get(network, network)

    pipe = load_pipeline(tiny_base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lycoris_kohya.LycorisNetworkKohya.apply_preset(PRESET)  # its default preset breaks on a diffusers UNet
        net, _ = lycoris_kohya.create_network_from_weights(1.0, str(out), pipe.vae, pipe.text_encoder, pipe.unet)
    assert len(net.unet_loras) == len(adapter.modules) == 32
    ours = load_pipeline(tiny_base)
    components = pipeline_components(ours)
    name = load_adapter(out, components)
    for module in net.unet_loras:
        layer = _our_layer(components, module.lora_name)
        reference = _reference_delta(module, layer.base_layer.weight.detach().float())
        assert reference.abs().max() > 0
        torch.testing.assert_close(layer.delta_weight(name), reference, rtol=1e-5, atol=1e-6)


def test_fresh_dora_and_lycoris_adapters_start_at_the_base():
    """B (LoRA), w2_a (LoHa) and w2's second factor (LoKr) start at zero and DoRA's magnitude at ‖W0‖."""
    from lora_diffusion.lora.config import LoraConfig
    from lora_diffusion.lora.layers import LoraConv2d, LoraLinear

    torch.manual_seed(0)
    for layer, x in ((LoraLinear(torch.nn.Linear(12, 16)), torch.randn(3, 12)),
                     (LoraConv2d(torch.nn.Conv2d(8, 16, 3, padding=1)), torch.randn(2, 8, 5, 5))):
        expected = layer.base_layer(x)
        for network in ("lora", "loha", "lokr"):
            for dora in (False, True):
                name = f"{network}_{int(dora)}"
                layer.add_adapter(name, LoraConfig(rank=2, network=network, dora=dora))
                assert layer.delta_weight(name).abs().max() <= 1e-6
        assert torch.allclose(layer(x), expected, atol=1e-5)
        assert sum(p.numel() for p in layer.lora_dense.parameters()) > 0 and len(layer.lora_magnitude) == 3


def test_bake_merges_a_loha_into_the_base_at_its_weight(tiny_base, tmp_path, capsys):
    from diffusers import UNet2DConditionModel

    from lora_diffusion.models.loading import load_pipeline

    pipe = load_pipeline(tiny_base)
    net = _lycoris_network(pipe, *CASES["loha-tucker-conv"])
    path = tmp_path / "loha.safetensors"
    net.save_weights(str(path), torch.float32, {})
    references = {m.lora_name: m for m in net.unet_loras}
    assert main(["bake", "--base", tiny_base, "--lora", f"{path}:0.6", "--out", str(tmp_path / "baked")]) == 0
    baked = UNet2DConditionModel.from_pretrained(str(tmp_path / "baked" / "unet"))
    base = load_pipeline(tiny_base).unet
    for module_path in ("conv_in", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"):
        w0 = base.get_submodule(module_path).weight.detach().float()
        expected = w0 + 0.6 * _reference_delta(references[kohya_name("unet", module_path)], w0)
        torch.testing.assert_close(baked.get_submodule(module_path).weight.detach().float(), expected,
                                   rtol=1e-5, atol=1e-6)


def test_loha_backward_keeps_only_the_factors_and_matches_autograd():
    from lora_diffusion.lora import deltas

    g = torch.Generator().manual_seed(0)
    factors = [torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
               for shape in ((6, 3), (3, 5), (6, 3), (3, 5))]
    assert torch.autograd.gradcheck(lambda *f: deltas.loha_delta(*f, scale=0.7), factors)
    out = deltas.loha_delta(*factors, scale=0.7)
    assert type(out.grad_fn).__name__ == "_HadamardProductBackward"
    plain = [f.detach().clone().requires_grad_(True) for f in factors]
    ((plain[0] @ plain[1]) * (plain[2] @ plain[3]) * 0.7).sum().backward()
    out.sum().backward()
    for ours, reference in zip(factors, plain):
        torch.testing.assert_close(ours.grad, reference.grad)


@pytest.mark.parametrize("shape, axis", [((6, 5), "out"), ((6, 5), "in"), ((4, 3, 3, 3), "out")])
def test_dora_training_path_matches_autograd_through_the_plain_formula(shape, axis):
    """The memory-lean DoRA change (recomputes W0 + s·BA in its backward) = autograd through dora_weight."""
    from lora_diffusion.lora import deltas

    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(shape, generator=g, dtype=torch.float64)
    up = torch.randn(shape[0], 2, *([1, 1] if len(shape) == 4 else []), generator=g, dtype=torch.float64)
    down = torch.randn(2, *shape[1:], generator=g, dtype=torch.float64)
    norm = deltas.column_norm(w0, axis)
    magnitude = (norm * 1.3).reshape(-1).clone()
    leaves = [t.clone().requires_grad_(True) for t in (up, down, magnitude)]
    lean = deltas.dora_lora_change(w0, *leaves[:2], 0.5, leaves[2], axis)
    plain_leaves = [t.clone().requires_grad_(True) for t in (up, down, magnitude)]
    delta = deltas.lora_delta(plain_leaves[1], plain_leaves[0], None, 0.5)
    plain = deltas.dora_weight(w0, delta, plain_leaves[2], axis, detach_norm=True) - w0
    torch.testing.assert_close(lean.double(), plain)
    weights = torch.randn(shape, generator=g, dtype=torch.float64)
    (lean * weights).sum().backward()
    (plain * weights).sum().backward()
    for ours, reference in zip(leaves, plain_leaves):
        torch.testing.assert_close(ours.grad, reference.grad)
