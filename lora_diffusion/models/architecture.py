"""A cheap fingerprint of a base model's weights (which family a base is: ``lora_diffusion.families``)."""

from __future__ import annotations

import hashlib

import torch

from .base_precision import is_quantized


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
