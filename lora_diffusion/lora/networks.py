"""Adapter networks whose weight change is built densely: LoHa, LoKr, LoCon-Tucker and full diffs.

Each holds its factors as parameters (so they train and save like LoRA's A and B) and builds
ΔW with ``deltas.py``; a LoRA layer adds ``x ↦ op(x, ΔW)`` beside the frozen base. Plain LoRA
stays two small layers in ``layers.py``: its low-rank path is cheaper than building ΔW.

Factor names are the kohya/LyCORIS tensor suffixes (``hada_w1_a``, ``lokr_w2_b`` …), so a file
module maps onto a network one name to one parameter.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import deltas


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n) with m·n = dimension, m ≤ n, m as close to √dimension as ``factor`` allows.

    LyCORIS's rule for splitting a LoKr dimension, so our LoKr shapes are the ones it builds
    (and rebuilds from a file): ``factor`` > 0 that divides the dimension is used as is.
    """
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (n, m) if m > n else (m, n)
    limit = dimension if factor < 0 else factor
    m, n = 1, dimension
    while m < n:
        candidate = m + 1
        while dimension % candidate:
            candidate += 1
        other = dimension // candidate
        if candidate + other > m + n or candidate > limit:
            break
        m, n = candidate, other
    return (n, m) if m > n else (m, n)


class DenseNetwork(nn.Module):
    """Factors of one module's adapter and the rule that turns them into ΔW."""

    kind = "dense"
    FACTORS: tuple[str, ...] = ()

    def __init__(self, weight_shape: tuple[int, ...], factors: dict[str, torch.Tensor | None], scale: float, rank: int) -> None:
        super().__init__()
        self.weight_shape = None if weight_shape is None else tuple(weight_shape)
        self.scale = float(scale)
        self.rank = int(rank)
        for name in self.FACTORS:
            tensor = factors.get(name)
            setattr(self, name, None if tensor is None else nn.Parameter(tensor))

    def factors(self) -> dict[str, torch.Tensor]:
        """The present factors by their file suffix."""
        return {n: getattr(self, n) for n in self.FACTORS if getattr(self, n) is not None}

    def build(self) -> torch.Tensor:
        raise NotImplementedError

    def delta(self) -> torch.Tensor:
        """ΔW in fp32 at full strength, shaped like the base weight."""
        built = self.build()
        return built if self.weight_shape is None else built.reshape(self.weight_shape)

    def _f(self, name: str) -> torch.Tensor | None:
        tensor = getattr(self, name)
        return None if tensor is None else tensor.float()

    def extra_repr(self) -> str:
        return f"{self.kind} rank={self.rank} scale={self.scale:g}"


class LohaNetwork(DenseNetwork):
    """LoHa: Hadamard product of two low-rank pairs (Tucker cores on k×k convs)."""

    kind = "loha"
    FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")

    def build(self):
        f = self._f
        return deltas.loha_delta(f("hada_w1_a"), f("hada_w1_b"), f("hada_w2_a"), f("hada_w2_b"), f("hada_t1"), f("hada_t2"), self.scale)

    @classmethod
    def fresh(cls, weight_shape, rank: int, alpha: float, dtype, device) -> "LohaNetwork":
        """LyCORIS's initialisation: w2_a zero so ΔW starts at zero, the rest random."""
        out_dim, in_dim = weight_shape[0], math.prod(weight_shape[1:])
        make = lambda *shape: torch.empty(*shape, dtype=dtype, device=device)  # noqa: E731
        factors = {"hada_w1_a": make(out_dim, rank), "hada_w1_b": make(rank, in_dim),
                   "hada_w2_a": make(out_dim, rank), "hada_w2_b": make(rank, in_dim)}
        with torch.no_grad():
            nn.init.normal_(factors["hada_w1_a"], std=0.1)
            nn.init.normal_(factors["hada_w1_b"], std=1.0)
            nn.init.zeros_(factors["hada_w2_a"])
            nn.init.normal_(factors["hada_w2_b"], std=1.0)
        return cls(weight_shape, factors, alpha / rank, rank)


class LokrNetwork(DenseNetwork):
    """LoKr: Kronecker product of a small w1 and a larger w2, each full or a low-rank pair."""

    kind = "lokr"
    FACTORS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")

    def build(self):
        f = self._f
        return deltas.lokr_delta(f("lokr_w1"), f("lokr_w1_a"), f("lokr_w1_b"), f("lokr_w2"), f("lokr_w2_a"),
                                 f("lokr_w2_b"), f("lokr_t2"), self.scale)

    @classmethod
    def fresh(cls, weight_shape, rank: int, alpha: float, factor: int, dtype, device) -> "LokrNetwork":
        """LyCORIS's shapes and initialisation: w1 full (a×c), w2 a rank-r pair (b×d) unless r is
        at least half of w2's larger side (then full, and alpha no longer scales); w2's second
        factor zero so ΔW starts at zero."""
        out_dim, in_dim = weight_shape[0], weight_shape[1]
        kernel = tuple(weight_shape[2:])
        out_l, out_k = factorization(out_dim, factor)
        in_m, in_n = factorization(in_dim, factor)
        make = lambda *shape: torch.empty(*shape, dtype=dtype, device=device)  # noqa: E731
        factors: dict[str, torch.Tensor] = {"lokr_w1": make(out_l, in_m)}
        full_w2 = rank >= max(out_k, in_n) / 2
        if full_w2:
            factors["lokr_w2"] = make(out_k, in_n, *kernel)
        else:
            factors["lokr_w2_a"] = make(out_k, rank)
            factors["lokr_w2_b"] = make(rank, in_n * math.prod(kernel))
        with torch.no_grad():
            nn.init.kaiming_uniform_(factors["lokr_w1"], a=math.sqrt(5))
            if full_w2:
                nn.init.zeros_(factors["lokr_w2"])
            else:
                nn.init.kaiming_uniform_(factors["lokr_w2_a"], a=math.sqrt(5))
                nn.init.zeros_(factors["lokr_w2_b"])
        return cls(weight_shape, factors, 1.0 if full_w2 else alpha / rank, rank)


class LoconTuckerNetwork(DenseNetwork):
    """LoRA on a k×k conv with a Tucker core (LyCORIS LoCon ``lora_mid``)."""

    kind = "lora"
    FACTORS = ()  # parameter names cannot hold dots: the file suffixes come from factors()

    def __init__(self, weight_shape, factors, scale, rank):
        super().__init__(weight_shape, {}, scale, rank)
        self.down = nn.Parameter(factors["lora_down.weight"])
        self.mid = nn.Parameter(factors["lora_mid.weight"])
        self.up = nn.Parameter(factors["lora_up.weight"])

    def factors(self):
        return {"lora_down.weight": self.down, "lora_mid.weight": self.mid, "lora_up.weight": self.up}

    def build(self):
        return deltas.lora_delta(self.down.float(), self.up.float(), self.mid.float(), self.scale)


class FullNetwork(DenseNetwork):
    """A full weight difference (LyCORIS "full"/``diff``): ΔW stored as is."""

    kind = "full"
    FACTORS = ("diff",)

    def build(self):
        return self._f("diff")


NETWORKS = {"loha": LohaNetwork, "lokr": LokrNetwork, "full": FullNetwork}

__all__ = ["factorization", "DenseNetwork", "LohaNetwork", "LokrNetwork", "LoconTuckerNetwork", "FullNetwork", "NETWORKS"]
