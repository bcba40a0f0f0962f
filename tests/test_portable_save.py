"""Pipeline folders we write load the same under transformers 4.x and 5.x (the prefixed CLIP text layout)."""

import torch
from safetensors import safe_open

from lora_diffusion.models.portable_save import prefix_clip_text_weights, save_pipeline
from lora_diffusion.models.tiny import tiny_pipeline


def _keys(path):
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def test_saved_text_encoder_is_prefixed_and_loads_back_identically(tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = tiny_pipeline("sd1", seed=0)
    save_pipeline(pipe, tmp_path / "p")
    keys = _keys(tmp_path / "p" / "text_encoder" / "model.safetensors")
    assert keys and all(k.startswith("text_model.") for k in keys)
    again = StableDiffusionPipeline.from_pretrained(str(tmp_path / "p"))
    ids = torch.randint(3, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again.text_encoder(ids).last_hidden_state, pipe.text_encoder(ids).last_hidden_state)
    assert prefix_clip_text_weights(tmp_path / "p") == []  # already prefixed: nothing rewritten


def test_only_unprefixed_clip_text_models_are_rewritten(tmp_path):
    pipe = tiny_pipeline("sd1", seed=0)
    pipe.save_pretrained(str(tmp_path / "p"), safe_serialization=True)
    te = tmp_path / "p" / "text_encoder" / "model.safetensors"
    unet = tmp_path / "p" / "unet" / "diffusion_pytorch_model.safetensors"
    unet_keys = _keys(unet)
    was_prefixed = all(k.startswith("text_model.") for k in _keys(te))
    changed = prefix_clip_text_weights(tmp_path / "p")
    assert changed == ([] if was_prefixed else [te])
    assert all(k.startswith("text_model.") for k in _keys(te))
    assert _keys(unet) == unet_keys
