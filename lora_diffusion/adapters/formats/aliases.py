"""Other tools' names for kohya-layout modules, renamed before a file is read.

* ComfyUI's FLUX LoRAs (and the trainers that write for it): ``diffusion_model.<module path>.<tensor>``, the
  module path in the model's own names (BFL's ``double_blocks.0.img_attn.qkv`` for FLUX) with PEFT's
  ``lora_A``/``lora_B`` or kohya's ``lora_down``/``lora_up`` tensors; its CLIP-L as ``text_encoders.clip_l.
  transformer.<path>``.
* LyCORIS's own prefix for the wrapped denoiser, ``lycoris_<path>.<tensor>`` (SimpleTuner's LoKr files).

Each becomes ``lora_unet_<path with underscores>.<kohya tensor name>`` (``lora_te1_…`` for the text encoder), so
one reader serves them all.
"""

from __future__ import annotations

import re

import torch

_PREFIXES = {"diffusion_model.": "lora_unet_", "text_encoders.clip_l.transformer.": "lora_te1_"}
_LYCORIS = "lycoris_"
_TENSORS = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}
# where a dotted module path ends and the tensor name begins
_TENSOR_START = re.compile(r"\.(?=(lora_[AB]\.|lora_(down|up|mid)\.|alpha$|dora_scale$|diff$|diff_b$|hada_|lokr_))")


def _renamed(key: str) -> str | None:
    for prefix, kohya in _PREFIXES.items():
        if key.startswith(prefix):
            match = _TENSOR_START.search(key, len(prefix))
            if not match:
                return None
            tensor = key[match.end():]
            return kohya + key[len(prefix):match.start()].replace(".", "_") + "." + _TENSORS.get(tensor, tensor)
    if key.startswith(_LYCORIS):
        return "lora_unet_" + key[len(_LYCORIS):]
    return None


def to_kohya_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with every ComfyUI/LyCORIS-prefixed name in kohya's naming; unchanged unless every name is one
    of those (a file mixing layouts is left for the layout check to name)."""
    renamed = {key: _renamed(key) for key in tensors}
    if not tensors or any(name is None for name in renamed.values()):
        return tensors
    return {renamed[key]: value for key, value in tensors.items()}
