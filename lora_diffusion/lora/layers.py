"""LoRA layers: one frozen base module plus any number of named adapters.

y = W0·x + b0 + Σᵢ wᵢ·ΔWᵢ·x + Σᵢ wᵢ·Δbᵢ

``wᵢ`` is the runtime weight (the slider). For a plain LoRA ΔWᵢ = (αᵢ/rᵢ)·Bᵢ·Aᵢ and the
path runs as two small layers on dropout(x); LoHa, LoKr, LoCon-Tucker and full diffs
(``networks.py``) build ΔWᵢ densely. A DoRA adapter's ΔWᵢ is the change its weight
decomposition makes at full strength, m·(W0 + ΔW)/‖W0 + ΔW‖ − W0, always against the pristine
W0: so wᵢ scales every adapter type linearly, adapters add up in any order, and weight 0 is
the base bit for bit (A1111's and ComfyUI's convention for DoRA strength).

Merging writes Σ wᵢ·ΔWᵢ into the base weight. A pristine copy of W0 is kept aside while
merged, so any sequence of merges, weight changes and unmerges restores W0 bit for bit, and
weight changes are cheap updates that are periodically re-blended from W0 so rounding never
accumulates.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserError
from . import deltas
from .config import LoraConfig
from .networks import DenseNetwork, LohaNetwork, LokrNetwork


_HALF = (torch.float16, torch.bfloat16)


def _autocast_on(x: torch.Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled() if x.is_cuda else torch.is_autocast_cpu_enabled()


class LoraLayer(nn.Module):
    """Base class: adapter bookkeeping, merging and the forward sum.

    Subclasses only say how to build A and B for their base module type and how
    the product B·A maps onto the base weight's shape.
    """

    REBLEND_EVERY = 16  # incremental weight changes between fresh blends from W0

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.lora_bias = nn.ParameterDict()
        self.lora_dense = nn.ModuleDict()  # LoHa / LoKr / LoCon-Tucker / full networks
        self.lora_magnitude = nn.ParameterDict()  # DoRA magnitudes m, shaped to broadcast on W
        self.dora_axis: dict[str, str] = {}  # "out" (per output row) or "in" (per input column)
        self.rank: dict[str, int] = {}
        self.alpha: dict[str, float] = {}
        self.adapter_weight: dict[str, float] = {}
        self.adapter_enabled: dict[str, bool] = {}
        # name -> weight that is currently baked into base_layer's tensors
        self._merged: dict[str, float] = {}
        self._pristine: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._updates = 0  # low-rank updates since the last fresh blend from W0
        self._side: list[tuple[str, float]] | None = None  # forward's side paths, cached

    # ---- what subclasses provide -------------------------------------------------
    def _make_down_up(self, rank: int, dtype: torch.dtype, device: torch.device) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def _product(self, name: str) -> torch.Tensor:
        """B·A in fp32, shaped like the base weight (no scale, no runtime weight)."""
        raise NotImplementedError

    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The base operation with ``weight`` in place of W0 and no bias."""
        raise NotImplementedError

    # ---- adapters ------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self.rank)

    def add_adapter(
        self,
        name: str,
        config: LoraConfig,
        *,
        rank: int | None = None,
        with_bias_delta: bool | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Add a fresh adapter of ``config.network`` (LoRA: A random, B zero; LoHa/LoKr: LyCORIS's
        initialisation), so the layer's output is unchanged. ``config.dora`` adds a DoRA magnitude
        initialised to ‖W0‖ per output row.

        ``rank=0`` makes a bias-only adapter (used by ``bias="all"`` on modules
        that are not LoRA targets). ``dtype`` defaults to the base weight's dtype.
        """
        if name in self.rank:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        if "." in name or not name or hasattr(nn.ModuleDict(), name):
            # ModuleDict keys become attributes: "train", "to" etc. would shadow its methods
            raise ValueError(f"adapter name must be non-empty, without '.', and not a module method name; got {name!r}")
        rank = config.rank if rank is None else rank
        base_w = self.base_layer.weight
        dtype = dtype or base_w.dtype
        device = base_w.device
        network = getattr(config, "network", "lora")
        if rank > 0 and network != "lora":
            alpha = config.effective_alpha
            if network == "loha":
                self.lora_dense[name] = LohaNetwork.fresh(tuple(base_w.shape), rank, alpha, dtype, device)
            else:
                self.lora_dense[name] = LokrNetwork.fresh(tuple(base_w.shape), rank, alpha, config.factor, dtype, device)
        elif rank > 0:
            down, up = self._make_down_up(rank, dtype, device)
            with torch.no_grad():
                if config.init == "gaussian":
                    nn.init.normal_(down.weight, std=1.0 / rank)
                else:
                    nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
                nn.init.zeros_(up.weight)
            self.lora_A[name] = down
            self.lora_B[name] = up
            self.lora_dropout[name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        if with_bias_delta is None:
            with_bias_delta = config.bias != "none"
        if with_bias_delta and getattr(self.base_layer, "bias", None) is not None:
            self.lora_bias[name] = nn.Parameter(torch.zeros_like(self.base_layer.bias, dtype=dtype))
        if rank == 0 and name not in self.lora_bias:
            raise ValueError("a rank-0 adapter needs a bias delta and a base layer with a bias")
        self.rank[name] = rank
        self.alpha[name] = config.effective_alpha if rank > 0 else 1.0
        self.adapter_weight[name] = 1.0
        self.adapter_enabled[name] = True
        if rank > 0 and getattr(config, "dora", False):
            w0 = self.base_weight().detach().float()
            self.set_magnitude(name, deltas.column_norm(w0, "out").to(dtype), "out")
        self._side = None

    def add_dense(self, name: str, network: DenseNetwork, *, alpha: float, with_bias_delta: bool = False) -> None:
        """Add an adapter whose ΔW is built densely (LoHa, LoKr, LoCon-Tucker, full) from given factors."""
        if name in self.rank:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        if tuple(network.weight_shape) != tuple(self.base_layer.weight.shape):
            raise ValueError(f"network shape {network.weight_shape} is not the base weight's {tuple(self.base_layer.weight.shape)}")
        self.lora_dense[name] = network
        if with_bias_delta:
            self.lora_bias[name] = nn.Parameter(torch.zeros_like(self.base_layer.bias, dtype=self.base_layer.weight.dtype))
        self.rank[name] = max(network.rank, 1)
        self.alpha[name] = float(alpha)
        self.adapter_weight[name] = 1.0
        self.adapter_enabled[name] = True
        self._side = None

    def set_magnitude(self, name: str, magnitude: torch.Tensor, axis: str) -> None:
        """Make adapter ``name`` a DoRA adapter with magnitude ``m`` normalised along ``axis``."""
        w = self.base_layer.weight
        shape = (w.shape[0], *[1] * (w.dim() - 1)) if axis == "out" else (1, w.shape[1], *[1] * (w.dim() - 2))
        self.lora_magnitude[name] = nn.Parameter(magnitude.detach().reshape(shape).clone())
        self.dora_axis[name] = axis
        self._side = None

    def base_weight(self) -> torch.Tensor:
        """The base weight without any merged adapter."""
        return self._pristine[0] if self._pristine is not None else self.base_layer.weight

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapter ``name``'s (down, up) factor weights A and B (the live parameters' data, not copies)."""
        return self.lora_A[name].weight.detach(), self.lora_B[name].weight.detach()

    @torch.no_grad()
    def set_factors(self, name: str, down: torch.Tensor, up: torch.Tensor) -> None:
        """Overwrite adapter ``name``'s A and B (shapes must match); a merged layer shows them after ``merge(fresh=True)``."""
        self.lora_A[name].weight.copy_(down)
        self.lora_B[name].weight.copy_(up)

    def freeze(self, name: str) -> None:
        """Stop training adapter ``name``: every parameter it owns here stops taking gradients."""
        for store in (self.lora_A, self.lora_B, self.lora_dense, self.lora_bias, self.lora_magnitude):
            if name in store:
                store[name].requires_grad_(False)

    def bake(self) -> nn.Module:
        """Blend every adapter at its weight into the base module for good and return it (no way back)."""
        self.merge(fresh=True)
        self._pristine = None
        return self.base_layer

    def is_low_rank(self, name: str) -> bool:
        """True for a plain LoRA (no DoRA): its path runs as B·A, never as a dense ΔW."""
        return name in self.lora_A and name not in self.lora_magnitude

    def delete_adapter(self, name: str) -> None:
        """Remove one adapter; if it was merged, the merge is redone without it."""
        if name not in self.rank:
            raise KeyError(name)
        was_merged = self.merged
        if was_merged:
            self.unmerge()
        for store in (self.lora_A, self.lora_B, self.lora_dropout, self.lora_bias, self.lora_dense, self.lora_magnitude):
            if name in store:
                del store[name]
        for store in (self.rank, self.alpha, self.adapter_weight, self.adapter_enabled):
            del store[name]
        self.dora_axis.pop(name, None)
        self._side = None
        if was_merged and self.rank:
            self.merge()

    def scaling(self, name: str) -> float:
        return self.alpha[name] / self.rank[name] if self.rank[name] else 1.0

    def set_weight(self, name: str, weight: float) -> None:
        self.adapter_weight[name] = float(weight)
        self._side = None

    def set_enabled(self, name: str, enabled: bool) -> None:
        self.adapter_enabled[name] = bool(enabled)
        self._side = None

    def effective_weight(self, name: str) -> float:
        """The multiplier this adapter should contribute right now (0 when disabled)."""
        return self.adapter_weight[name] if self.adapter_enabled[name] else 0.0

    def raw_delta(self, name: str) -> torch.Tensor:
        """The adapter's own ΔW in fp32 at full strength, before any DoRA decomposition."""
        if name in self.lora_dense:
            return self.lora_dense[name].delta()
        if name in self.lora_A:
            return self._product(name) * self.scaling(name)
        return torch.zeros(self.base_layer.weight.shape, dtype=torch.float32, device=self.base_layer.weight.device)

    def delta_weight(self, name: str) -> torch.Tensor:
        """The adapter's change to the base weight at runtime weight 1, in fp32.

        For DoRA that is m·(W0 + ΔW)/‖W0 + ΔW‖ − W0 against the pristine W0; while training the
        norm is a constant for the gradient, as in the DoRA paper and PEFT.
        """
        if name not in self.lora_magnitude:
            return self.raw_delta(name)
        magnitude = self.lora_magnitude[name]
        if self.training and name in self.lora_A and torch.is_grad_enabled() and magnitude.requires_grad:
            # training DoRA on a plain LoRA: a backward that keeps no full-size fp32 matrix
            return deltas.dora_lora_change(self.base_weight().detach(), self.lora_B[name].weight, self.lora_A[name].weight,
                                           self.scaling(name), magnitude, self.dora_axis[name])
        raw = self.raw_delta(name)
        w0 = self.base_weight().detach().float().to(raw.device)
        magnitude = self.lora_magnitude[name].float().to(raw.device)
        return deltas.dora_weight(w0, raw, magnitude, self.dora_axis[name], detach_norm=self.training) - w0

    # ---- merging -----------------------------------------------------------------
    @property
    def merged(self) -> bool:
        return self._pristine is not None

    @torch.no_grad()
    def merge(self, fresh: bool = False, exact: bool = False) -> None:
        """Bake the current weights of all adapters into the base tensors.

        ``fresh=True`` always re-blends from W0 (needed after A/B themselves changed,
        e.g. more training); otherwise only weight changes since the last merge are applied.

        A weight change on a merged fp32 layer is applied as one low-rank update
        (``W += Δw·s·B·A`` for the adapters that changed: the cost of one LoRA however
        many are loaded); every ``REBLEND_EVERY``-th change, on any change of dtype-sensitive
        (fp16/bf16) weights, and whenever the layer is first merged, the blend is recomputed
        from the pristine W0, so rounding never builds up. All weights 0 copies W0 back,
        bit for bit. Forward stays correct whether merged or not.

        ``exact=True`` never takes the incremental path: the blended weight is then a function of the current
        weights alone (W0 plus the active adapters in name order), whatever was blended before — what a seed
        needs to reproduce an image bit for bit.
        """
        active = {n: w for n in sorted(self.rank) if (w := self.effective_weight(n)) != 0.0}
        if self._pristine is not None and active == self._merged and not fresh:
            return
        weight = self.base_layer.weight
        if type(weight.data) is not torch.Tensor:
            raise UserError("a LoRA cannot be merged into a quantized base weight (stored in 8 or 4 bits); "
                            "load the base at full precision (--base-precision auto) to merge or bake")
        bias = getattr(self.base_layer, "bias", None)
        if self._pristine is None:
            self._pristine = (weight.detach().clone(), None if bias is None else bias.detach().clone())
        w0, b0 = self._pristine
        incremental = (
            not fresh and not exact and bool(self._merged) and bool(active) and self._updates < self.REBLEND_EVERY
            and weight.dtype == torch.float32 and weight.is_contiguous()
        )
        if incremental:
            change = {n: active.get(n, 0.0) - self._merged.get(n, 0.0) for n in set(active) | set(self._merged)}
            self._add_deltas(weight, {n: d for n, d in change.items() if d != 0.0})
            if bias is not None:
                for n, d in change.items():
                    if d != 0.0 and n in self.lora_bias:
                        bias.add_(d * self.lora_bias[n].detach().to(bias.dtype))
            self._updates += 1
        else:
            weight.copy_(w0)
            if bias is not None:
                bias_terms = [w * self.lora_bias[n].detach().float().to(b0.device) for n, w in active.items() if n in self.lora_bias]
                bias.copy_((b0.float() + sum(bias_terms)).to(b0.dtype) if bias_terms else b0)
            self._add_deltas(weight, active)
            self._updates = 0
        self._merged = active
        self._side = None

    def _add_deltas(self, weight: torch.Tensor, weights: dict[str, float]) -> None:
        """weight += Σ wᵢ·ΔWᵢ in place, in fp32: plain LoRAs as one matmul over the concatenated
        ranks, the other types as their dense ΔW."""
        names = [n for n in weights if self.rank[n] > 0 and self.is_low_rank(n)]
        dense = [n for n in weights if self.rank[n] > 0 and not self.is_low_rank(n)]
        if not names and not dense:
            return
        device = weight.device
        in_place = weight.dtype == torch.float32 and weight.is_contiguous()
        total = weight.data.view(weight.shape[0], -1) if in_place else weight.flatten(1).float()
        if names:
            up = torch.cat([self.lora_B[n].weight.detach().flatten(1).float() * (weights[n] * self.scaling(n)) for n in names], dim=1)
            down = torch.cat([self.lora_A[n].weight.detach().flatten(1).float() for n in names])
            total = total.addmm_(up.to(device), down.to(device))
        for n in dense:
            total.add_(self.delta_weight(n).detach().to(device).flatten(1), alpha=weights[n])
        if not in_place:
            weight.copy_(total.view(weight.shape).to(weight.dtype))

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the pristine base tensors back, bit-identical."""
        if self._pristine is None:
            return
        w0, b0 = self._pristine
        self.base_layer.weight.copy_(w0)
        if b0 is not None:
            self.base_layer.bias.copy_(b0)
        self._pristine = None
        self._merged = {}
        self._side = None

    # ---- forward -------------------------------------------------------------------
    def _lora_path(self, name: str, x: torch.Tensor) -> torch.Tensor:
        down = self.lora_A[name]
        if x.dtype != down.weight.dtype and not _autocast_on(x):
            if x.dtype in _HALF and down.weight.dtype == torch.float32:
                # fp32 adapter (trained master weights) on a half-precision base: compute in the base's
                # precision, as autocast would, rather than copying x to fp32 (activation memory)
                with torch.autocast(x.device.type, dtype=x.dtype):
                    return self.lora_B[name](down(self.lora_dropout[name](x)))
            x = x.to(down.weight.dtype)
        return self.lora_B[name](down(self.lora_dropout[name](x)))

    def _bias_shape(self, out: torch.Tensor) -> tuple[int, ...]:
        return (-1,)

    def side_paths(self) -> list[tuple[str, float]]:
        """(adapter, weight) pairs forward must still add: the part not baked into the base weight."""
        if self._side is None:
            side = [(n, self.effective_weight(n) - self._merged.get(n, 0.0)) for n in self.rank]
            self._side = [(n, w) for n, w in side if w != 0.0]
        return self._side

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        # Fully merged (the generation case) leaves nothing to add: base-model cost.
        for name, w in self.side_paths():
            if self.rank[name] > 0 and not self.is_low_rank(name):
                delta = self.delta_weight(name)
                out = out + w * self._apply_weight(x, delta.to(x.dtype) if not _autocast_on(x) else delta)
            elif self.rank[name] > 0:
                lora = self._lora_path(name, x)
                # one fused kernel for scale-and-add: at batch 1 the step is kernel-launch bound
                out = torch.add(out, lora if lora.dtype == out.dtype else lora.to(out.dtype), alpha=w * self.scaling(name))
            if name in self.lora_bias:
                out = out + (w * self.lora_bias[name]).to(out.dtype).view(self._bias_shape(out))
        return out

    def extra_repr(self) -> str:
        def kind(n: str) -> str:
            base = self.lora_dense[n].kind if n in self.lora_dense else "lora"
            return base + ("+dora" if n in self.lora_magnitude else "")

        return ", ".join(f"{n}: {kind(n)} r={self.rank[n]} alpha={self.alpha[n]:g} w={self.adapter_weight[n]:g}" for n in self.rank)


class LoraLinear(LoraLayer):
    """LoRA around a frozen ``nn.Linear``: A is in→r, B is r→out."""

    def _make_down_up(self, rank, dtype, device):
        base: nn.Linear = self.base_layer
        down = nn.Linear(base.in_features, rank, bias=False, dtype=dtype, device=device)
        up = nn.Linear(rank, base.out_features, bias=False, dtype=dtype, device=device)
        return down, up

    def _product(self, name):
        return self.lora_B[name].weight.float() @ self.lora_A[name].weight.float()

    def _apply_weight(self, x, weight):
        return nn.functional.linear(x, weight)


class LoraConv2d(LoraLayer):
    """LoRA around a frozen ``nn.Conv2d`` (LoCon): A has the base kernel, B is 1×1."""

    def __init__(self, base_layer: nn.Conv2d) -> None:
        if base_layer.groups != 1:
            raise ValueError("LoRA on grouped convolutions is not supported")
        super().__init__(base_layer)

    def _make_down_up(self, rank, dtype, device):
        base: nn.Conv2d = self.base_layer
        down = nn.Conv2d(
            base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation,
            bias=False, padding_mode=base.padding_mode, dtype=dtype, device=device,
        )
        up = nn.Conv2d(rank, base.out_channels, 1, bias=False, dtype=dtype, device=device)
        return down, up

    def _product(self, name):
        down = self.lora_A[name].weight.float()
        up = self.lora_B[name].weight.float()
        return (up.flatten(1) @ down.flatten(1)).reshape(self.base_layer.weight.shape)

    def _apply_weight(self, x, weight):
        return self.base_layer._conv_forward(x, weight, None)

    def _bias_shape(self, out):
        return (1, -1, 1, 1)


def wrap_module(module: nn.Module) -> LoraLayer:
    """The LoRA layer type for a base module, or a clear error for unsupported ones."""
    if isinstance(module, LoraLayer):
        return module
    if isinstance(module, nn.Linear):
        return LoraLinear(module)
    if isinstance(module, nn.Conv2d):
        return LoraConv2d(module)
    raise TypeError(f"LoRA supports nn.Linear and nn.Conv2d, not {type(module).__name__}")


__all__ = ["LoraLayer", "LoraLinear", "LoraConv2d", "wrap_module"]
