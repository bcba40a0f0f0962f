"""LoRA files in a model's original module names, where several diffusers Linears are one fused module — what
kohya's scripts, ComfyUI and Forge read and write for the DiT families (FLUX.1's BFL names, SD3's MMDiT names).

Inside, an adapter is named by diffusers' module paths (``lora_unet_transformer_blocks_0_attn_to_q``), one module
per Linear. A ``FusedLayout`` holds one family's table: which diffusers sub-path of which block is which original
module, and at which part of a fused one. Fusing is exact: the parts' ``down`` matrices stacked, their ``up``
matrices placed block-diagonally (each scaled by its own α/r, the fused α = its rank); splitting gives each part the
shared ``down`` and its rows of ``up``. A part a fused module does not train (rows all zero) is left out when split.
A fused module of another network type (LoKr, LoHa, a full diff: what LyCORIS writes) splits into each part's rows
of its ΔW, exactly, as full diffs; a bias delta splits by rows too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ..errors import UserError
from .modules import ModuleDelta, ModuleLora, ModuleLycoris

UNET = "lora_unet_"
# diffusers sub-path of a block -> (original module, part index in the fused module or None)
Table = Mapping[str, tuple[str, "int | None"]]


@dataclass(frozen=True)
class FusedLayout:
    """One family's original module names over diffusers' (see the module docstring)."""

    label: str  # what error lines call the layout
    blocks: Mapping[str, tuple[str, Table]]  # diffusers block list -> (original block list, its table)
    # (fused original module, its output rows or 0 when fusing, its input width or 0 when unknown) -> the rows of
    # each part, in part order
    part_rows: Callable[[str, int, int], list[int]]
    # (original module, a module's ΔW rows, its input width) -> whether its rows are kept in the other order (SD3's
    # last context block stores its AdaLN (scale, shift) where diffusers has (shift, scale))
    swapped: Callable[[str, int, int], bool] = lambda leaf, rows, width: False

    def _pattern(self, names) -> re.Pattern:
        return re.compile(rf"{UNET}({'|'.join(sorted(names, key=len, reverse=True))})_(\d+)_(.+)$")

    def is_original(self, names) -> bool:
        """Whether module names are in this layout."""
        pattern = self._pattern(original for original, _ in self.blocks.values())
        return any(pattern.match(name) for name in names)

    def to_original(self, modules: dict[str, ModuleDelta]) -> dict[str, ModuleDelta]:
        """Diffusers-path modules in the original layout (exact). Modules that cannot be fused into a single LoRA
        pair (LoHa, LoKr, DoRA, bias deltas) keep their diffusers-path names."""
        pattern = self._pattern(self.blocks)
        denoiser = {n: m for n, m in modules.items() if pattern.match(n)}
        if not denoiser or not _fusable(denoiser):
            return dict(modules)
        out = {n: m for n, m in modules.items() if n not in denoiser}
        groups: dict[str, dict[int, ModuleLora]] = {}
        for name, module in denoiser.items():
            block, index, sub = pattern.match(name).groups()
            original, table = self.blocks[block]
            if sub not in table:
                out[name] = module
                continue
            leaf, part = table[sub]
            fused = f"{UNET}{original}_{index}_{leaf}"
            if part is not None:
                groups.setdefault(fused, {})[part] = module
            elif self.swapped(leaf, int(module.up.shape[0]), int(module.down.shape[1])):
                out[fused] = ModuleLora(alpha=module.alpha, down=module.down, up=_swap_halves(module.up))
            else:
                out[fused] = module
        for fused, parts in groups.items():
            out[fused] = self._fuse(fused, parts)
        return out

    def from_original(self, modules: dict[str, ModuleDelta], source: object = "LoRA file") -> dict[str, ModuleDelta]:
        """Original-named modules as diffusers-path modules (fused ones split); other names kept as they are."""
        inverse = {original: (ours, table) for ours, (original, table) in self.blocks.items()}
        pattern = self._pattern(inverse)
        out: dict[str, ModuleDelta] = {}
        for name, module in modules.items():
            match = pattern.match(name)
            if not match:
                out[name] = module
                continue
            block, index, leaf = match.groups()
            ours, table = inverse[block]
            parts = sorted((part, sub) for sub, (original, part) in table.items() if original == leaf)
            if not parts:
                out[name] = module  # an original module diffusers has no counterpart for: reported as not in the base
                continue
            prefix = f"{UNET}{ours}_{index}_"
            if parts[0][0] is None:
                out[prefix + parts[0][1]] = self._unswapped(leaf, module)
                continue
            for (_, sub), part in zip(parts, self._split(name, leaf, module, source)):
                if part is not None:
                    out[prefix + sub] = part
        return out

    def _unswapped(self, leaf: str, module: ModuleDelta) -> ModuleDelta:
        if type(module) is not ModuleLora or module.up is None or module.mid is not None:
            return module
        if not self.swapped(leaf, int(module.up.shape[0]), int(module.down.shape[1])):
            return module
        return ModuleLora(alpha=module.alpha, down=module.down, up=_swap_halves(module.up), diff_b=module.diff_b,
                          dora_scale=module.dora_scale)

    def _fuse(self, name: str, parts: dict[int, ModuleLora]) -> ModuleLora:
        """One LoRA pair whose ΔW is the parts' ΔWs stacked by rows (missing parts zero)."""
        any_part = next(iter(parts.values()))
        sizes = self.part_rows(name, 0, int(any_part.down.shape[1]))
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

    def _split(self, name: str, leaf: str, module: ModuleDelta, source: object) -> list[ModuleDelta | None]:
        """A fused module's parts in row order (None: a part it leaves at zero)."""
        if module.dora_scale is not None:
            raise UserError(f"{source}: module {name} is a fused {self.label} module with DoRA, which cannot be split "
                            "into q/k/v exactly; save it with split q/k/v (diffusers layout) instead")
        if type(module) is ModuleLora and module.mid is None:
            up = module.up.reshape(module.up.shape[0], -1)
            rows = self.part_rows(leaf, up.shape[0], int(module.down.shape[1]))
            parts = [_part(module, part_up) if part_up.numel() and bool(part_up.any()) else None
                     for part_up in torch.split(up, rows)]
        else:
            delta = module.checked_delta(name, source) if module.has_weight else None
            out_features = int(delta.shape[0]) if delta is not None else int(module.diff_b.shape[0])
            rows = self.part_rows(leaf, out_features, int(delta.shape[1]) if delta is not None else 0)
            pieces = torch.split(delta, rows) if delta is not None else [None] * len(rows)
            parts = [None if piece is None or not bool(piece.any()) else
                     ModuleLycoris(network_kind="full", factors={"diff": piece.contiguous()}) for piece in pieces]
        if module.diff_b is not None:
            for i, bias in enumerate(torch.split(module.diff_b, rows)):
                if bool(bias.any()):
                    parts[i] = parts[i] or ModuleLycoris(network_kind="full")
                    parts[i].diff_b = bias.clone()
        return parts


def _swap_halves(up: torch.Tensor) -> torch.Tensor:
    first, second = up.chunk(2, dim=0)
    return torch.cat([second, first])


def _part(fused: ModuleLora, up: torch.Tensor) -> ModuleLora:
    """One part of a fused module: the shared ``down`` and the part's ``up`` rows, without the rank columns the
    part does not use (a block-diagonal fuse gives each part its own), at the same α/r scale."""
    used = up.abs().sum(dim=0) > 0
    down = fused.down.reshape(fused.down.shape[0], -1)[used].reshape(-1, *fused.down.shape[1:])
    return ModuleLora(alpha=fused.scale * int(used.sum()), down=down.clone(), up=up[:, used].clone())


def _fusable(modules: dict[str, ModuleDelta]) -> bool:
    return all(type(m) is ModuleLora and m.mid is None and m.dora_scale is None and m.diff_b is None
               for m in modules.values())
