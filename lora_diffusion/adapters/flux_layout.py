"""FLUX.1 LoRAs in the Black Forest Labs / kohya layout — what ComfyUI, Forge and kohya's scripts read and write —
and back: ``lora_unet_double_blocks_N_img_attn_qkv`` (q, k and v fused into one module), ``…_img_attn_proj``,
``…_img_mlp_0/2``, ``…_img_mod_lin``, the ``txt_*`` twins, ``lora_unet_single_blocks_N_linear1`` (q, k, v and the
MLP input fused), ``…_linear2``, ``…_modulation_lin``. The fusing itself is ``fused_layout.py``'s.
"""

from __future__ import annotations

from .fused_layout import UNET, FusedLayout
from .modules import ModuleDelta

MLP_RATIO = 4  # FLUX.1's single blocks: the MLP input is 4 × the hidden width
DOUBLE = {
    "attn_to_q": ("img_attn_qkv", 0), "attn_to_k": ("img_attn_qkv", 1), "attn_to_v": ("img_attn_qkv", 2),
    "attn_to_out_0": ("img_attn_proj", None), "ff_net_0_proj": ("img_mlp_0", None), "ff_net_2": ("img_mlp_2", None),
    "norm1_linear": ("img_mod_lin", None),
    "attn_add_q_proj": ("txt_attn_qkv", 0), "attn_add_k_proj": ("txt_attn_qkv", 1), "attn_add_v_proj": ("txt_attn_qkv", 2),
    "attn_to_add_out": ("txt_attn_proj", None), "ff_context_net_0_proj": ("txt_mlp_0", None),
    "ff_context_net_2": ("txt_mlp_2", None), "norm1_context_linear": ("txt_mod_lin", None),
}
SINGLE = {
    "attn_to_q": ("linear1", 0), "attn_to_k": ("linear1", 1), "attn_to_v": ("linear1", 2), "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", None), "norm_linear": ("modulation_lin", None),
}


def _part_rows(leaf: str, out: int, hidden: int) -> list[int]:
    if leaf.endswith("qkv"):
        return [hidden or out // 3] * 3
    hidden = hidden or out // (3 + MLP_RATIO)
    return [hidden] * 3 + [out - 3 * hidden if out else MLP_RATIO * hidden]  # linear1: q, k, v, MLP input


BFL = FusedLayout("FLUX", {"transformer_blocks": ("double_blocks", DOUBLE),
                           "single_transformer_blocks": ("single_blocks", SINGLE)}, _part_rows)


def is_bfl(names) -> bool:
    """Whether module names are in the BFL layout."""
    return BFL.is_original(names)


def is_flux(names) -> bool:
    """Whether module names are a FLUX transformer's (diffusers paths)."""
    return any(name.startswith(UNET + "single_transformer_blocks_") for name in names)


def to_bfl(modules: dict[str, ModuleDelta]) -> dict[str, ModuleDelta]:
    """Diffusers-path FLUX modules in the BFL layout (see ``FusedLayout.to_original``)."""
    return BFL.to_original(modules)


def from_bfl(modules: dict[str, ModuleDelta], source: object = "LoRA file") -> dict[str, ModuleDelta]:
    """BFL-named modules as diffusers-path modules (see ``FusedLayout.from_original``)."""
    return BFL.from_original(modules, source)
