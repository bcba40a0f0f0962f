"""One module's adapter as read from or written to a file: plain data plus its ΔW.

Types: ``ModuleLora`` (LoRA/LoCon, optional Tucker ``mid``) and ``ModuleLycoris`` (LoHa, LoKr,
full diff). Any of them may carry a DoRA magnitude (``dora_scale``) and a bias delta
(``diff_b``). The math lives in ``lora/deltas.py``, shared with the layers that train them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..errors import UserError
from ..lora import deltas
from ..lora.networks import NETWORKS, DenseNetwork, LoconTuckerNetwork


# Larger than every layer of a supported base (FLUX's biggest linear is 3072×15360 = 47M values), far below what
# a hostile file's factors can describe (a 12000×12000 LoKr ΔW is 144M values, 576 MB in fp32).
MAX_DELTA_ELEMENTS = 64 * 2**20


@dataclass
class ModuleDelta:
    """What every adapter module type shares."""

    alpha: float | None = None
    diff_b: torch.Tensor | None = None
    dora_scale: torch.Tensor | None = None

    kind = "lora"

    @property
    def rank(self) -> int:
        return 0

    @property
    def scale(self) -> float:
        """α/r, with kohya's convention that a missing alpha means α = r."""
        if not self.rank:
            return 1.0
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    @property
    def has_weight(self) -> bool:
        """True when the module changes the weight (not only the bias)."""
        return False

    @property
    def is_low_rank(self) -> bool:
        """True for a plain LoRA pair without DoRA: blended as B·A, merged by rank concatenation."""
        return False

    def delta(self) -> torch.Tensor:
        """ΔW in fp32 at full strength (before DoRA), in the factors' shape."""
        raise NotImplementedError

    def network(self, weight_shape: tuple[int, ...]) -> DenseNetwork | None:
        """A dense network for the layers, or None for a plain low-rank pair."""
        return None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.diff_b, self.dora_scale) if t is not None]

    def set_part(self, part: str, tensor: torch.Tensor) -> None:
        """Store one tensor of the module by its field name (``alpha`` is a scalar)."""
        if part == "alpha":
            self.alpha = float(tensor.float().item())
        else:
            setattr(self, part, tensor)

    def on_meta(self) -> "ModuleDelta":
        """The same module with every tensor on the meta device: shapes only, nothing allocated."""
        return replace(self, **{k: v.to("meta") for k, v in vars(self).items() if isinstance(v, torch.Tensor)})

    def checked_shape(self, name: str, source: object) -> torch.Size:
        """The shape ``delta()`` would have, worked out from the factor shapes without building it (a 48 KB LoKr
        can describe a 12000×12000 ΔW); inconsistent factors or a size no base layer has is one error line."""
        try:
            shape = self.on_meta().delta().shape
        except (RuntimeError, IndexError, ValueError, KeyError) as error:
            raise UserError(f"{source}: module {name}: its {self.kind} tensors do not fit together "
                            f"({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
                            "the file is corrupt") from None
        if shape.numel() > MAX_DELTA_ELEMENTS:
            raise UserError(f"{source}: module {name}: its {self.kind} factors make a weight change of shape "
                            f"{tuple(shape)} ({shape.numel() / 1e6:.0f}M values), larger than any layer of a supported "
                            "base; the file is corrupt or not a LoRA")
        return shape

    def checked_delta(self, name: str, source: object) -> torch.Tensor:
        """``delta()``, after ``checked_shape``: a corrupt or oversized module is refused before it is built."""
        self.checked_shape(name, source)
        return self.delta()


@dataclass
class ModuleLora(ModuleDelta):
    """LoRA/LoCon: ``down`` is A, ``up`` is B (kohya naming), ``mid`` a Tucker core for k×k convs."""

    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    mid: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return 0 if self.down is None else int(self.down.shape[0])

    @property
    def has_weight(self) -> bool:
        return self.down is not None

    @property
    def is_low_rank(self) -> bool:
        return self.down is not None and self.mid is None and self.dora_scale is None

    def delta(self) -> torch.Tensor:
        """(α/r)·up·down in fp32, shaped (out, in) or (out, in, kh, kw)."""
        mid = None if self.mid is None else self.mid.float()
        return deltas.lora_delta(self.down.float(), self.up.float(), mid, self.scale)

    def network(self, weight_shape):
        if self.mid is None:
            return None
        factors = {"lora_down.weight": self.down, "lora_mid.weight": self.mid, "lora_up.weight": self.up}
        return LoconTuckerNetwork(weight_shape, {k: v.detach().clone() for k, v in factors.items()}, self.scale, self.rank)

    def tensors(self):
        return [t for t in (self.down, self.up, self.mid) if t is not None] + super().tensors()


@dataclass
class ModuleLycoris(ModuleDelta):
    """LoHa, LoKr or a full diff: ``factors`` maps the LyCORIS tensor suffix to the tensor."""

    network_kind: str = "loha"
    factors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.network_kind

    @property
    def rank(self) -> int:
        f = self.factors
        if self.network_kind == "loha":
            return int(f["hada_w1_b"].shape[0])
        if self.network_kind == "lokr":
            for key in ("lokr_w1_b", "lokr_w2_b"):
                if key in f:
                    return int(f[key].shape[0])
        return 0

    @property
    def has_weight(self) -> bool:
        return bool(self.factors)

    def delta(self) -> torch.Tensor:
        """ΔW in fp32 (a LoKr with both halves full and a full diff have rank 0: scale 1, as LyCORIS)."""
        with torch.no_grad():
            return NETWORKS[self.network_kind](None, dict(self.factors), self.scale, self.rank).build()

    def on_meta(self) -> "ModuleLycoris":
        meta = super().on_meta()
        meta.factors = {k: v.to("meta") for k, v in self.factors.items()}
        return meta

    def network(self, weight_shape):
        factors = {k: v.detach().clone() for k, v in self.factors.items()}
        return NETWORKS[self.network_kind](weight_shape, factors, self.scale, self.rank)

    def tensors(self):
        return list(self.factors.values()) + super().tensors()


def dora_axis_or_error(module: ModuleDelta, weight_shape: tuple[int, ...], name: str, source: object) -> str:
    """Which axis a module's ``dora_scale`` normalises, or one error line naming the module."""
    axis = deltas.dora_axis(module.dora_scale, weight_shape)
    if axis is None:
        raise UserError(f"{source}: module {name}: dora_scale {tuple(module.dora_scale.shape)} fits neither the "
                        f"output nor the input axis of the base layer {tuple(weight_shape)}; the file is for another base")
    return axis


__all__ = ["ModuleDelta", "ModuleLora", "ModuleLycoris", "dora_axis_or_error"]
