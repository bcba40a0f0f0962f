"""Adapter file layouts, one module each, behind this small registry.

* ``kohya``: A1111/ComfyUI/kohya names; plain LoRA/LoCon tensors, DoRA ``dora_scale``;
* ``lycoris``: LoHa, LoKr and full-diff tensors in the same kohya naming;
* ``diffusers``: diffusers and PEFT names (``lora_A``/``lora_B``, ``lora_magnitude_vector``).

Everything is read into ``{kohya module name: ModuleDelta}``. Adding a network type means one
codec in its layout's file and one line in ``CODECS``.
"""

from __future__ import annotations

import torch

from ...errors import UserError
from ..modules import ModuleDelta
from . import diffusers, kohya, lycoris

# per-module network types of kohya-named files, in the order their markers are tried
CODECS: list[kohya.Codec] = [kohya.LORA, lycoris.LOHA, lycoris.LOKR, lycoris.FULL]
WRITE_LAYOUTS = ("kohya", "diffusers")
METADATA_KEY = diffusers.METADATA_KEY


def detect_layout(keys: list[str]) -> str:
    """"kohya", "diffusers" or "peft" from tensor names; "unknown" if none fits."""
    return diffusers.detect_layout(keys)


def parse(layout: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: object,
          peft_config: dict | None = None) -> dict[str, ModuleDelta]:
    """Modules of a state dict in ``layout`` (as ``detect_layout`` named it)."""
    if layout == "kohya":
        return kohya.parse_state_dict(tensors, CODECS, source)
    return diffusers.parse_diffusers_state_dict(tensors, metadata, source, peft_config=peft_config)


def serialize(modules: dict[str, ModuleDelta], layout: str, dtype: torch.dtype,
              denoiser: str = "unet") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, extra metadata) for writing ``modules`` in ``layout`` (``denoiser``: the pipeline attribute the
    ``lora_unet_`` modules belong to)."""
    if layout == "kohya":
        return kohya.to_state_dict(modules, {c.kind: c for c in CODECS}, dtype), {}
    if layout == "diffusers":
        tensors, extra = diffusers.to_diffusers_state_dict(modules, denoiser)
        return {k: v.detach().to("cpu", torch.float32 if k.endswith("lora_magnitude_vector") else dtype).contiguous()
                for k, v in tensors.items()}, extra
    raise UserError(f"layout {layout!r} is not one of {', '.join(WRITE_LAYOUTS)}")
