import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A saved tiny SD1-architecture pipeline folder, usable as --base."""
    from lora_diffusion.models.tiny import tiny_pipeline

    folder = tmp_path_factory.mktemp("base") / "tiny"
    tiny_pipeline("sd1", seed=0).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture
def sd1():
    from lora_diffusion.models.tiny import tiny_components

    return tiny_components("sd1", seed=0)


def unet_inputs(unet, batch=2, seed=0, size=8):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, unet.config.in_channels, size, size, generator=g)
    context = torch.randn(batch, 4, unet.config.cross_attention_dim, generator=g)
    return sample, torch.tensor([10] * batch), context


def unet_out(unet, inputs):
    with torch.no_grad():
        return unet(*inputs).sample


def randomize_lora(model, name, seed=1, scale=0.1):
    """Give an adapter non-zero B (as if trained) so its delta is visible."""
    from lora_diffusion import lora_layers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            if name in layer.lora_B:
                w = layer.lora_B[name].weight
                w.copy_((torch.randn(w.shape, generator=g) * scale).to(w.dtype))
            if name in layer.lora_bias:
                b = layer.lora_bias[name]
                b.copy_((torch.randn(b.shape, generator=g) * scale).to(b.dtype))
