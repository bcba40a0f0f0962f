"""FLUX.1 LoRAs in the Black Forest Labs / kohya layout — what ComfyUI, Forge and kohya's scripts read and write —
and back: ``lora_unet_double_blocks_N_img_attn_qkv`` (q, k and v fused into one module), ``…_img_attn_proj``,
``…_img_mlp_0/2``, ``…_img_mod_lin``, the ``txt_*`` twins, ``lora_unet_single_blocks_N_linear1`` (q, k, v and the
MLP input fused), ``…_linear2``, ``…_modulation_lin``.

Inside, a FLUX adapter is named by diffusers' module paths (``lora_unet_transformer_blocks_0_attn_to_q``), one
module per Linear. Fusing is exact: the parts' ``down`` matrices stacked, their ``up`` matrices placed block-
diagonally (each scaled by its own α/r, the fused α = its rank); splitting gives each part the shared ``down`` and
its rows of ``up``. A part a fused module does not train (rows all zero) is left out when split. A fused module of
another network type (LoKr, LoHa, a full diff: what LyCORIS writes for FLUX) splits into each part's rows of its ΔW,
exactly, as full diffs; a bias delta splits by rows too.
"""

from __future__ import annotations

import re

import torch

from ..errors import UserError
from .modules import ModuleDelta, ModuleLora, ModuleLycoris

UNET = "lora_unet_"
MLP_RATIO = 4  # FLUX.1's single blocks: the MLP input is 4 × the hidden width
# diffusers sub-path of a double block -> (BFL module, part index in the fused module or None)
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
_OURS = re.compile(r"lora_unet_(single_transformer_blocks|transformer_blocks)_(\d+)_(.+)$")
_BFL = re.compile(r"lora_unet_(single_blocks|double_blocks)_(\d+)_(.+)$")


def is_bfl(names) -> bool:
    """Whether module names are in the BFL layout."""
    return any(_BFL.match(name) for name in names)


def is_flux(names) -> bool:
    """Whether module names are a FLUX transformer's (diffusers paths)."""
    return any(name.startswith(UNET + "single_transformer_blocks_") for name in names)


def _split_rows(fused: str, out: int, hidden: int) -> list[int]:
    if fused.endswith("qkv"):
        return [out // 3] * 3
    return [hidden, hidden, hidden, out - 3 * hidden]  # linear1: q, k, v, MLP input


def from_bfl(modules: dict[str, ModuleDelta], source: object = "LoRA file") -> dict[str, ModuleDelta]:
    """BFL-named modules as diffusers-path modules (fused ones split); other names kept as they are."""
    inverse = {"double_blocks": ("transformer_blocks", DOUBLE), "single_blocks": ("single_transformer_blocks", SINGLE)}
    out: dict[str, ModuleDelta] = {}
    for name, module in modules.items():
        match = _BFL.match(name)
        if not match:
            out[name] = module
            continue
        block, index, leaf = match.groups()
        ours, table = inverse[block]
        parts = sorted((part, sub) for sub, (bfl, part) in table.items() if bfl == leaf)
        if not parts:
            out[name] = module  # a BFL module diffusers has no counterpart for: reported as not in the base
            continue
        prefix = f"{UNET}{ours}_{index}_"
        if parts[0][0] is None:
            out[prefix + parts[0][1]] = module
            continue
        for (_, sub), part in zip(parts, _split(name, leaf, module, source)):
            if part is not None:
                out[prefix + sub] = part
    return out


def _split(name: str, leaf: str, module: ModuleDelta, source: object) -> list[ModuleDelta | None]:
    """A fused module's parts in row order (None: a part it leaves at zero)."""
    if module.dora_scale is not None:
        raise UserError(f"{source}: module {name} is a fused FLUX module with DoRA, which cannot be split into "
                        "q/k/v exactly; save it with split q/k/v (diffusers layout) instead")
    if type(module) is ModuleLora and module.mid is None:
        up = module.up.reshape(module.up.shape[0], -1)
        rows = _split_rows(leaf, up.shape[0], int(module.down.shape[1]))
        parts = [_part(module, part_up) if part_up.numel() and bool(part_up.any()) else None
                 for part_up in torch.split(up, rows)]
    else:
        delta = module.checked_delta(name, source) if module.has_weight else None
        out_features = int(delta.shape[0]) if delta is not None else int(module.diff_b.shape[0])
        in_features = int(delta.shape[1]) if delta is not None else out_features // (3 + MLP_RATIO)
        rows = _split_rows(leaf, out_features, in_features)
        pieces = torch.split(delta, rows) if delta is not None else [None] * len(rows)
        parts = [None if piece is None or not bool(piece.any()) else
                 ModuleLycoris(network_kind="full", factors={"diff": piece.contiguous()}) for piece in pieces]
    if module.diff_b is not None:
        for i, bias in enumerate(torch.split(module.diff_b, rows)):
            if bool(bias.any()):
                parts[i] = parts[i] or ModuleLycoris(network_kind="full")
                parts[i].diff_b = bias.clone()
    return parts


def _part(fused: ModuleLora, up: torch.Tensor) -> ModuleLora:
    """One part of a fused module: the shared ``down`` and the part's ``up`` rows, without the rank columns the
    part does not use (a block-diagonal fuse gives each part its own), at the same α/r scale."""
    used = up.abs().sum(dim=0) > 0
    down = fused.down.reshape(fused.down.shape[0], -1)[used].reshape(-1, *fused.down.shape[1:])
    return ModuleLora(alpha=fused.scale * int(used.sum()), down=down.clone(), up=up[:, used].clone())


def _fusable(modules: dict[str, ModuleDelta]) -> bool:
    return all(type(m) is ModuleLora and m.mid is None and m.dora_scale is None and m.diff_b is None
               for m in modules.values())


def to_bfl(modules: dict[str, ModuleDelta]) -> dict[str, ModuleDelta]:
    """Diffusers-path FLUX modules in the BFL layout (exact). Modules that cannot be fused into a single LoRA
    pair (LoHa, LoKr, DoRA, bias deltas) keep their diffusers-path names."""
    unet = {n: m for n, m in modules.items() if _OURS.match(n)}
    if not unet or not _fusable(unet):
        return dict(modules)
    out = {n: m for n, m in modules.items() if n not in unet}
    groups: dict[str, dict[int, ModuleLora]] = {}
    for name, module in unet.items():
        block, index, sub = _OURS.match(name).groups()
        table, bfl_block = (SINGLE, "single_blocks") if block.startswith("single") else (DOUBLE, "double_blocks")
        if sub not in table:
            out[name] = module
            continue
        leaf, part = table[sub]
        fused = f"{UNET}{bfl_block}_{index}_{leaf}"
        if part is None:
            out[fused] = module
        else:
            groups.setdefault(fused, {})[part] = module
    for fused, parts in groups.items():
        out[fused] = _fuse(fused, parts)
    return out


def _fuse(name: str, parts: dict[int, ModuleLora]) -> ModuleLora:
    """One LoRA pair whose ΔW is the parts' ΔWs stacked by rows (missing parts zero)."""
    any_part = next(iter(parts.values()))
    hidden = int(any_part.up.shape[0])
    sizes = [hidden] * 3 if name.endswith("qkv") else [hidden] * 3 + [MLP_RATIO * hidden]
    order = sorted(parts)
    down = torch.cat([parts[i].down.float() for i in order])
    up = torch.zeros(sum(sizes), down.shape[0])
    column = 0
    for i in order:
        part = parts[i]
        row = sum(sizes[:i])
        up[row:row + sizes[i], column:column + part.rank] = part.up.float().reshape(sizes[i], -1) * part.scale
        column += part.rank
    return ModuleLora(alpha=float(down.shape[0]), down=down.to(any_part.down.dtype), up=up.to(any_part.up.dtype))
