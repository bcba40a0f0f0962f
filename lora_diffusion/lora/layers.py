"""LoRA layers: one frozen base module plus any number of named low-rank adapters.

y = W0·x + b0 + Σᵢ wᵢ·(αᵢ/rᵢ)·Bᵢ·Aᵢ·dropout(x) + Σᵢ wᵢ·Δbᵢ

``wᵢ`` is the runtime weight (the slider), ``αᵢ/rᵢ`` the adapter's fixed scale.
Merging writes Σ wᵢ·(αᵢ/rᵢ)·BᵢAᵢ into the base weight. A pristine copy of W0 is
kept aside while merged, so any sequence of merges, weight changes and unmerges
restores W0 bit for bit, and weight changes are cheap low-rank updates that are
periodically re-blended from W0 so rounding never accumulates.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import LoraConfig


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
        """Add a fresh adapter: A random, B zero, so the layer's output is unchanged.

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
        if rank > 0:
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
        self._side = None

    def delete_adapter(self, name: str) -> None:
        """Remove one adapter; if it was merged, the merge is redone without it."""
        if name not in self.rank:
            raise KeyError(name)
        was_merged = self.merged
        if was_merged:
            self.unmerge()
        for store in (self.lora_A, self.lora_B, self.lora_dropout, self.lora_bias):
            if name in store:
                del store[name]
        for store in (self.rank, self.alpha, self.adapter_weight, self.adapter_enabled):
            del store[name]
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

    def delta_weight(self, name: str) -> torch.Tensor:
        """(α/r)·B·A in fp32: the adapter's change to the base weight at runtime weight 1."""
        return self._product(name) * self.scaling(name)

    # ---- merging -----------------------------------------------------------------
    @property
    def merged(self) -> bool:
        return self._pristine is not None

    @torch.no_grad()
    def merge(self, fresh: bool = False) -> None:
        """Bake the current weights of all adapters into the base tensors.

        ``fresh=True`` always re-blends from W0 (needed after A/B themselves changed,
        e.g. more training); otherwise only weight changes since the last merge are applied.

        A weight change on a merged fp32 layer is applied as one low-rank update
        (``W += Δw·s·B·A`` for the adapters that changed: the cost of one LoRA however
        many are loaded); every ``REBLEND_EVERY``-th change, on any change of dtype-sensitive
        (fp16/bf16) weights, and whenever the layer is first merged, the blend is recomputed
        from the pristine W0, so rounding never builds up. All weights 0 copies W0 back,
        bit for bit. Forward stays correct whether merged or not.
        """
        active = {n: w for n in self.rank if (w := self.effective_weight(n)) != 0.0}
        if self._pristine is not None and active == self._merged and not fresh:
            return
        weight = self.base_layer.weight
        bias = getattr(self.base_layer, "bias", None)
        if self._pristine is None:
            self._pristine = (weight.detach().clone(), None if bias is None else bias.detach().clone())
        w0, b0 = self._pristine
        incremental = (
            not fresh and bool(self._merged) and bool(active) and self._updates < self.REBLEND_EVERY
            and weight.dtype == torch.float32 and weight.is_contiguous()
        )
        if incremental:
            change = {n: active.get(n, 0.0) - self._merged.get(n, 0.0) for n in set(active) | set(self._merged)}
            self._add_low_rank(weight, {n: d for n, d in change.items() if d != 0.0})
            if bias is not None:
                for n, d in change.items():
                    if d != 0.0 and n in self.lora_bias:
                        bias.add_(d * self.lora_bias[n].detach().to(bias.dtype))
            self._updates += 1
        else:
            weight.copy_(w0)
            if bias is not None:
                deltas = [w * self.lora_bias[n].detach().float().to(b0.device) for n, w in active.items() if n in self.lora_bias]
                bias.copy_((b0.float() + sum(deltas)).to(b0.dtype) if deltas else b0)
            self._add_low_rank(weight, active)
            self._updates = 0
        self._merged = active
        self._side = None

    def _add_low_rank(self, weight: torch.Tensor, weights: dict[str, float]) -> None:
        """weight += Σ wᵢ·sᵢ·BᵢAᵢ in place, as one matmul over the concatenated ranks (in fp32)."""
        names = [n for n in weights if self.rank[n] > 0]
        if not names:
            return
        device = weight.device
        up = torch.cat([self.lora_B[n].weight.detach().flatten(1).float() * (weights[n] * self.scaling(n)) for n in names], dim=1)
        down = torch.cat([self.lora_A[n].weight.detach().flatten(1).float() for n in names])
        up, down = up.to(device), down.to(device)
        if weight.dtype == torch.float32 and weight.is_contiguous():
            weight.data.view(weight.shape[0], -1).addmm_(up, down)
        else:
            weight.copy_(torch.addmm(weight.flatten(1).float(), up, down).view(weight.shape).to(weight.dtype))

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

    def _side_paths(self) -> list[tuple[str, float]]:
        """(adapter, weight) pairs forward must still add: the part not baked into the base weight."""
        if self._side is None:
            side = [(n, self.effective_weight(n) - self._merged.get(n, 0.0)) for n in self.rank]
            self._side = [(n, w) for n, w in side if w != 0.0]
        return self._side

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        # Fully merged (the generation case) leaves nothing to add: base-model cost.
        for name, w in self._side_paths():
            if self.rank[name] > 0:
                lora = self._lora_path(name, x)
                # one fused kernel for scale-and-add: at batch 1 the step is kernel-launch bound
                out = torch.add(out, lora if lora.dtype == out.dtype else lora.to(out.dtype), alpha=w * self.scaling(name))
            if name in self.lora_bias:
                out = out + (w * self.lora_bias[name]).to(out.dtype).view(self._bias_shape(out))
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: r={self.rank[n]} alpha={self.alpha[n]:g} w={self.adapter_weight[n]:g}" for n in self.rank)


class LoraLinear(LoraLayer):
    """LoRA around a frozen ``nn.Linear``: A is in→r, B is r→out."""

    def _make_down_up(self, rank, dtype, device):
        base: nn.Linear = self.base_layer
        down = nn.Linear(base.in_features, rank, bias=False, dtype=dtype, device=device)
        up = nn.Linear(rank, base.out_features, bias=False, dtype=dtype, device=device)
        return down, up

    def _product(self, name):
        return self.lora_B[name].weight.float() @ self.lora_A[name].weight.float()


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
