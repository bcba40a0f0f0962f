"""Files written here load in diffusers' own `load_lora_weights` and mean the same thing."""

import pytest
import torch

from conftest import diffusers_load_lora, randomize_lora, unet_inputs, unet_out
from lora_diffusion import LoraConfig, inject_adapter, load_adapter, pipeline_components, save_adapter
from lora_diffusion import set_adapter_weight
from lora_diffusion.models.tiny import tiny_pipeline

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    pipe = tiny_pipeline("sd1", seed=0)
    comps = pipeline_components(pipe)
    # alpha != rank, so a reader that ignores alpha would give a different output
    inject_adapter(comps["unet"], "style", LoraConfig(rank=4, alpha=1))
    inject_adapter(comps["te"], "style", LoraConfig(rank=4, alpha=1), kind="text")
    randomize_lora(comps["unet"], "style", 1, 0.2)
    randomize_lora(comps["te"], "style", 2, 0.2)
    return save_adapter(tmp_path_factory.mktemp("lora") / "style.safetensors", comps, "style")


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_diffusers_load_lora_weights_matches_engine(lora_file, weight):
    ours = tiny_pipeline("sd1", seed=0)
    theirs = tiny_pipeline("sd1", seed=0)
    comps = pipeline_components(ours)
    name = load_adapter(lora_file, comps, weight=weight)
    diffusers_load_lora(theirs, lora_file, "style")
    theirs.set_adapters(["style"], adapter_weights=[weight])

    # both halves of the file took effect in diffusers: text encoder and UNet differ from the base
    base = tiny_pipeline("sd1", seed=0)
    ids = torch.randint(3, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        te_ours = ours.text_encoder(ids).last_hidden_state
        te_theirs = theirs.text_encoder(ids).last_hidden_state
        te_base = base.text_encoder(ids).last_hidden_state
    assert (te_theirs - te_base).abs().max() > 1e-3
    torch.testing.assert_close(te_ours, te_theirs, rtol=1e-4, atol=1e-4)

    inputs = unet_inputs(ours.unet)
    out_ours, out_theirs = unet_out(ours.unet, inputs), unet_out(theirs.unet, inputs)
    assert (out_theirs - unet_out(base.unet, inputs)).abs().max() > 1e-3
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-4, atol=1e-4)
    set_adapter_weight(comps["unet"], name, 0.0)
    assert torch.equal(unet_out(ours.unet, inputs), unet_out(base.unet, inputs))


def _te_ids():
    return torch.randint(3, 50, (2, 8), generator=torch.Generator().manual_seed(0))


def _assert_same_networks(ours, theirs, base):
    """Text encoder and UNet outputs agree, and both differ from the base (the LoRA took effect)."""
    ids = _te_ids()
    with torch.no_grad():
        te = [p.text_encoder(ids).last_hidden_state for p in (ours, theirs, base)]
    assert (te[1] - te[2]).abs().max() > 1e-3
    torch.testing.assert_close(te[0], te[1], rtol=1e-4, atol=1e-4)
    inputs = unet_inputs(ours.unet)
    out = [unet_out(p.unet, inputs) for p in (ours, theirs, base)]
    assert (out[1] - out[2]).abs().max() > 1e-3
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-4)


def test_diffusers_layout_written_here_loads_in_diffusers(tmp_path, lora_file):
    from lora_diffusion import read_adapter, write_adapter

    diffusers_file = write_adapter(read_adapter(lora_file), tmp_path / "style_diffusers.safetensors", layout="diffusers")
    adapter = read_adapter(diffusers_file)
    assert adapter.layout == "diffusers"
    ours, theirs = tiny_pipeline("sd1", seed=0), tiny_pipeline("sd1", seed=0)
    load_adapter(lora_file, pipeline_components(ours), weight=0.7)
    diffusers_load_lora(theirs, diffusers_file, "style")
    theirs.set_adapters(["style"], adapter_weights=[0.7])
    _assert_same_networks(ours, theirs, tiny_pipeline("sd1", seed=0))


def _diffusers_made_lora(seed=0):
    """A tiny pipeline with a PEFT LoRA (UNet alpha 2, text encoder alpha 8, rank 4), B randomised.

    The adapters are injected with PEFT directly (`inject_adapter_in_model`), as diffusers' own LoRA loader does,
    not through transformers' `add_adapter`: that integration has its own PEFT floor, which a transformers release
    can raise above the newest PEFT (transformers 5.24 asked for peft>=0.22 while 0.21.2 was the newest)."""
    from peft import LoraConfig as PeftConfig
    from peft import inject_adapter_in_model

    pipe = tiny_pipeline("sd1", seed=0)
    unet_cfg = PeftConfig(r=4, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=True)
    te_cfg = PeftConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"], init_lora_weights=True)
    inject_adapter_in_model(unet_cfg, pipe.unet, adapter_name="default")
    inject_adapter_in_model(te_cfg, pipe.text_encoder, adapter_name="default")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in (pipe.unet, pipe.text_encoder):
            for pname, p in model.named_parameters():
                if "lora_B" in pname:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return pipe, unet_cfg, te_cfg


def test_file_saved_by_diffusers_loads_here_with_the_same_result(tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    from lora_diffusion import read_adapter

    theirs, unet_cfg, te_cfg = _diffusers_made_lora()
    StableDiffusionPipeline.save_lora_weights(
        tmp_path,
        unet_lora_layers=get_peft_model_state_dict(theirs.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(theirs.text_encoder),
        unet_lora_adapter_metadata=unet_cfg.to_dict(),
        text_encoder_lora_adapter_metadata=te_cfg.to_dict(),
        safe_serialization=True,
    )
    path = tmp_path / "pytorch_lora_weights.safetensors"
    adapter = read_adapter(path)
    assert adapter.layout == "diffusers"
    assert {m.alpha for n, m in adapter.modules.items() if n.startswith("lora_unet_")} == {2.0}
    assert {m.alpha for n, m in adapter.modules.items() if n.startswith("lora_te_")} == {8.0}
    ours = tiny_pipeline("sd1", seed=0)
    load_adapter(path, pipeline_components(ours))
    _assert_same_networks(ours, theirs, tiny_pipeline("sd1", seed=0))


def test_kohya_file_from_diffusers_converter_loads_here_with_the_same_result(tmp_path):
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    theirs, _, _ = _diffusers_made_lora(seed=3)
    peft_sd = {f"unet.{k}": v for k, v in get_peft_model_state_dict(theirs.unet).items()}
    peft_sd.update({f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(theirs.text_encoder).items()})
    kohya = convert_state_dict_to_kohya(peft_sd)
    # the converter writes alpha = rank; put the real alphas in, as kohya files carry them
    for key in list(kohya):
        if key.endswith(".alpha"):
            kohya[key] = torch.tensor(2.0 if key.startswith("lora_unet_") else 8.0)
    path = tmp_path / "kohya.safetensors"
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(path))
    ours = tiny_pipeline("sd1", seed=0)
    load_adapter(path, pipeline_components(ours))
    _assert_same_networks(ours, theirs, tiny_pipeline("sd1", seed=0))


def test_legacy_diffusers_names_read_like_current_ones(tmp_path, lora_file):
    """Old diffusers files: `.lora.down/up`, `lora_linear_layer`, attention-processor names, `.alpha` tensors."""
    from safetensors.torch import save_file

    from lora_diffusion import read_adapter
    from lora_diffusion.adapters.formats.diffusers import module_path

    kohya = read_adapter(lora_file)
    legacy = {}
    for name, m in kohya.modules.items():
        component, path = module_path(name)
        if component == "unet":
            parent, _, leaf = path.rpartition(".")
            if leaf == "0" and parent.endswith("to_out"):
                head = parent[: -len(".to_out")] + ".processor.to_out_lora"
            elif leaf in ("to_q", "to_k", "to_v"):
                head = parent + f".processor.{leaf}_lora"
            else:
                head = f"{path}.lora"
            legacy[f"unet.{head}.down.weight"], legacy[f"unet.{head}.up.weight"] = m.down, m.up
            legacy[f"unet.{path}.alpha"] = torch.tensor(m.alpha)
        else:
            legacy[f"text_encoder.{path}.lora_linear_layer.down.weight"] = m.down
            legacy[f"text_encoder.{path}.lora_linear_layer.up.weight"] = m.up
            legacy[f"text_encoder.{path}.alpha"] = torch.tensor(m.alpha)
    path = tmp_path / "legacy.safetensors"
    save_file(legacy, str(path))
    again = read_adapter(path)
    assert sorted(again.modules) == sorted(kohya.modules)
    for name, m in kohya.modules.items():
        assert torch.equal(again.modules[name].down, m.down) and torch.equal(again.modules[name].up, m.up)
        assert again.modules[name].alpha == m.alpha
