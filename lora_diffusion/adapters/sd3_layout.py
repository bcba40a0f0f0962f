"""SD3/SD3.5 LoRAs in kohya's MMDiT layout (sd-scripts' ``lora_sd3``; what ComfyUI also reads) and back:
``lora_unet_joint_blocks_N_x_block_attn_qkv`` (q, k and v fused), ``…_x_block_attn_proj``, ``…_x_block_mlp_fc1/2``,
``…_x_block_adaLN_modulation_1``, the ``context_block_*`` twins, and SD3.5's second image attention
``…_x_block_attn2_qkv/proj``. The last block's text AdaLN stores (scale, shift) where diffusers has (shift,
scale): its rows are swapped both ways. The fusing itself is ``fused_layout.py``'s.
"""

from __future__ import annotations

import re

from .fused_layout import UNET, FusedLayout

JOINT = {
    "attn_to_q": ("x_block_attn_qkv", 0), "attn_to_k": ("x_block_attn_qkv", 1), "attn_to_v": ("x_block_attn_qkv", 2),
    "attn_to_out_0": ("x_block_attn_proj", None), "ff_net_0_proj": ("x_block_mlp_fc1", None),
    "ff_net_2": ("x_block_mlp_fc2", None), "norm1_linear": ("x_block_adaLN_modulation_1", None),
    "attn_add_q_proj": ("context_block_attn_qkv", 0), "attn_add_k_proj": ("context_block_attn_qkv", 1),
    "attn_add_v_proj": ("context_block_attn_qkv", 2), "attn_to_add_out": ("context_block_attn_proj", None),
    "ff_context_net_0_proj": ("context_block_mlp_fc1", None), "ff_context_net_2": ("context_block_mlp_fc2", None),
    "norm1_context_linear": ("context_block_adaLN_modulation_1", None),
    "attn2_to_q": ("x_block_attn2_qkv", 0), "attn2_to_k": ("x_block_attn2_qkv", 1),
    "attn2_to_v": ("x_block_attn2_qkv", 2), "attn2_to_out_0": ("x_block_attn2_proj", None),
}
_OURS = re.compile(rf"{UNET}transformer_blocks_\d+_(attn_add_|ff_context_|attn_to_add_out)")


def _part_rows(leaf: str, out: int, hidden: int) -> list[int]:
    return [hidden or out // 3] * 3  # only q/k/v are fused in SD3


def _swapped(leaf: str, rows: int, width: int) -> bool:
    # the last joint block's text stream ends in a (scale, shift) AdaLN of 2 × width rows; the others have 6 ×
    return leaf.endswith("context_block_adaLN_modulation_1") and rows == 2 * width


MMDIT = FusedLayout("SD3", {"transformer_blocks": ("joint_blocks", JOINT)}, _part_rows, _swapped)


def is_mmdit(names) -> bool:
    """Whether diffusers-path module names are an SD3 transformer's: joint blocks with a text stream and no FLUX
    single blocks."""
    names = list(names)
    return any(_OURS.match(n) for n in names) and not any(n.startswith(UNET + "single_transformer_blocks_")
                                                          for n in names)
