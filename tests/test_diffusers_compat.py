"""Files written here load in diffusers' own `load_lora_weights` and mean the same thing."""

import pytest
import torch

from conftest import randomize_lora, unet_inputs, unet_out
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
    theirs.load_lora_weights(str(lora_file), adapter_name="style")
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
