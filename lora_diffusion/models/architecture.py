"""What kind of base model a network (or an adapter file) belongs to."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from .base_precision import is_quantized

ARCH_LABELS = {
    "sd1": "SD1.x",
    "sd2": "SD2.x",
    "sdxl": "SDXL",
    "builtin": "the built-in base",
    "custom": "a custom architecture",
}
# kohya's ss_base_model_version values, so A1111/ComfyUI/Civitai read ours
KOHYA_BASE_VERSION = {
    "sd1": "sd_v1",
    "sd2": "sd_v2",
    "sdxl": "sdxl_base_v1-0",
    "builtin": "lora_diffusion_builtin",
    "custom": "unknown",
}
_FROM_KOHYA = {
    "sd_v1": "sd1",
    "sd_v2": "sd2",
    "sd_v2_768_v": "sd2",
    "sdxl_base_v0-9": "sdxl",
    "sdxl_base_v1-0": "sdxl",
    "lora_diffusion_builtin": "builtin",
}
_CROSS_DIM_ARCH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def arch_from_kohya(version: str) -> str | None:
    return _FROM_KOHYA.get(version) or ("sdxl" if version.startswith("sdxl") else None)


def arch_from_cross_attention_dim(dim: int, has_second_text_encoder: bool = False) -> str:
    if has_second_text_encoder:
        return "sdxl"
    return _CROSS_DIM_ARCH.get(int(dim), "custom")


def detect_unet_architecture(unet: nn.Module) -> str:
    """sd1 / sd2 / sdxl from a diffusers UNet's config; "custom" for anything else.

    The built-in base carries ``"_lora_diffusion_base": true`` in its UNet config.
    """
    config = getattr(unet, "config", None)
    if config is None:
        return "custom"
    from .builtin import BUILTIN_MARKER

    if dict(config).get(BUILTIN_MARKER) is True:
        return "builtin"
    if getattr(config, "addition_embed_type", None) == "text_time":
        return "sdxl"
    dim = getattr(config, "cross_attention_dim", None)
    if isinstance(dim, (list, tuple)):
        dim = dim[0]
    return arch_from_cross_attention_dim(dim) if dim else "custom"


@torch.no_grad()
def fingerprint(named_weights: dict[str, torch.Tensor]) -> str:
    """A short hash of module names, shapes and leading values of their weights.

    Cheap enough to compute at every save (no full pass over the weights) yet it
    tells two checkpoints of the same architecture apart.
    """
    digest = hashlib.sha256()
    for name in sorted(named_weights):
        tensor = named_weights[name]
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        if tensor.device.type != "meta":
            if is_quantized(tensor):  # a quantized base (--base-precision int8/fp8/nf4)
                tensor = tensor.get_original_weight() if hasattr(tensor, "get_original_weight") else tensor.dequantize()
            head = tensor.detach().flatten()[:64].float().cpu().numpy()
            digest.update(head.tobytes())
    return digest.hexdigest()[:16]
