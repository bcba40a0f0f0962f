"""Weight changes of each adapter network type, as plain tensor functions (fp32 in, fp32 out).

One definition per type, shared by the layers that train and blend them and by the file tools,
written to match the reference implementation (LyCORIS's module forward; its ``merge_to``
applies alpha/rank twice for LoHa/LoKr, which A1111 and ComfyUI do not follow):

* LoRA (LoCon):  ΔW = s · up @ down, with a Tucker core ``mid`` for k×k convs;
* LoHa:          ΔW = s · (w1_a @ w1_b) ⊙ (w2_a @ w2_b), Tucker cores ``t1``/``t2`` for k×k convs;
* LoKr:          ΔW = s · w1 ⊗ w2, each half full or a low-rank pair (``w2`` with a Tucker core);
* DoRA:          W' = m · (W0 + ΔW) / ‖W0 + ΔW‖, the norm per output row (or per input column
  for files that store ``dora_scale`` shaped (1, in)).

``s`` is alpha / rank. Shapes of the result follow the factors; callers reshape to the base weight.
"""

from __future__ import annotations

import torch

# LyCORIS adds this to the DoRA norm so an all-zero row cannot divide by zero
_NORM_EPS = torch.finfo(torch.float32).eps


def tucker(core: torch.Tensor, out_factor: torch.Tensor, in_factor: torch.Tensor) -> torch.Tensor:
    """Rebuild a k×k conv weight from a Tucker core (r1, r2, kh, kw) and factors (r1, out), (r2, in)."""
    return torch.einsum("i j ..., i p, j r -> p r ...", core, out_factor, in_factor)


def lora_delta(down: torch.Tensor, up: torch.Tensor, mid: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
    """s · up @ down, shaped (out, in) or (out, in, kh, kw); ``mid`` is a LoCon Tucker core."""
    out_dim = up.shape[0]
    if mid is None:
        product = up.reshape(out_dim, -1) @ down.reshape(down.shape[0], -1)
        return product.reshape(out_dim, *down.shape[1:]) * scale
    return tucker(mid, up.reshape(out_dim, -1).t(), down.reshape(down.shape[0], -1)) * scale


def loha_delta(
    w1_a: torch.Tensor, w1_b: torch.Tensor, w2_a: torch.Tensor, w2_b: torch.Tensor,
    t1: torch.Tensor | None = None, t2: torch.Tensor | None = None, scale: float = 1.0,
) -> torch.Tensor:
    """s · (w1_a @ w1_b) ⊙ (w2_a @ w2_b); with Tucker cores w*_a are (r, out) and w*_b (r, in)."""
    if t1 is not None:
        return tucker(t1, w1_a, w1_b) * tucker(t2, w2_a, w2_b) * scale
    if torch.is_grad_enabled() and any(t.requires_grad for t in (w1_a, w1_b, w2_a, w2_b)):
        return _HadamardProduct.apply(w1_a, w1_b, w2_a, w2_b, scale)
    return (w1_a @ w1_b) * (w2_a @ w2_b) * scale


class _HadamardProduct(torch.autograd.Function):
    """LoHa's ΔW keeping only the four thin factors for the backward pass (it recomputes the two
    full-size products there), not the two full-size products autograd would keep: on SDXL that is
    two fp32 matrices per adapted layer, gigabytes at 1024 px."""

    @staticmethod
    def forward(ctx, w1_a, w1_b, w2_a, w2_b, scale):
        ctx.save_for_backward(w1_a, w1_b, w2_a, w2_b)
        ctx.scale = scale
        return (w1_a @ w1_b) * (w2_a @ w2_b) * scale

    @staticmethod
    def backward(ctx, grad):
        w1_a, w1_b, w2_a, w2_b = ctx.saved_tensors
        grad = grad * ctx.scale
        via_1 = grad * (w2_a @ w2_b)  # ∂L/∂(w1_a @ w1_b)
        via_2 = grad * (w1_a @ w1_b)
        return via_1 @ w1_b.t(), w1_a.t() @ via_1, via_2 @ w2_b.t(), w2_a.t() @ via_2, None


def lokr_delta(
    w1: torch.Tensor | None, w1_a: torch.Tensor | None, w1_b: torch.Tensor | None,
    w2: torch.Tensor | None, w2_a: torch.Tensor | None, w2_b: torch.Tensor | None,
    t2: torch.Tensor | None = None, scale: float = 1.0,
) -> torch.Tensor:
    """s · w1 ⊗ w2; a conv's w2 keeps its kernel axes (w1 is broadcast over them)."""
    if w1 is None:
        w1 = w1_a @ w1_b
    if w2 is None:
        if t2 is not None:
            w2 = tucker(t2, w2_a, w2_b)
        else:
            w2 = w2_a @ w2_b.reshape(w2_b.shape[0], -1)
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    if w1.is_meta or w2.is_meta:
        # shape only (a ΔW checked before it is built): the meta kron's first call costs a second of set-up
        return torch.empty([a * b for a, b in zip(w1.shape, w2.shape)], device="meta")
    # kron views its inputs: an einsum result may not be laid out for that
    return torch.kron(w1.contiguous(), w2.contiguous()) * scale


def dora_axis(magnitude: torch.Tensor, weight_shape: torch.Size | tuple[int, ...]) -> str | None:
    """"out" (one magnitude per output row), "in" (per input column) or None if it fits neither."""
    out_dim, in_dim = weight_shape[0], weight_shape[1]
    shape = tuple(magnitude.shape)
    if magnitude.numel() == out_dim and (len(shape) <= 1 or shape[0] == out_dim):
        return "out"
    if magnitude.numel() == in_dim and len(shape) >= 2 and shape[0] == 1 and shape[1] == in_dim:
        return "in"
    return None


def column_norm(weight: torch.Tensor, axis: str) -> torch.Tensor:
    """‖W‖ per output row ("out") or per input column ("in"), shaped to broadcast against W."""
    if axis == "out":
        return weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (weight.dim() - 1))
    moved = weight.transpose(0, 1)
    norms = moved.reshape(moved.shape[0], -1).norm(dim=1)
    return norms.reshape(1, -1, *[1] * (weight.dim() - 2))


def dora_weight(w0: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, axis: str, *, detach_norm: bool = False) -> torch.Tensor:
    """m · (W0 + ΔW) / ‖W0 + ΔW‖: the DoRA weight at full strength, in fp32.

    ``detach_norm`` treats the norm as a constant for the gradient (the DoRA paper's §4.3 and
    PEFT's training choice: same values, far less backward memory).
    """
    combined = w0 + delta
    norm = column_norm(combined, axis) + _NORM_EPS
    if detach_norm:
        norm = norm.detach()
    shape = norm.shape
    return combined * (magnitude.reshape(shape) / norm)


def dora_lora_change(w0: torch.Tensor, up: torch.Tensor, down: torch.Tensor, scale: float, magnitude: torch.Tensor,
                     axis: str) -> torch.Tensor:
    """m·(W0 + s·up@down)/‖W0 + s·up@down‖ − W0 in fp32 (or fp64), shaped like W0, for training: the norm is a
    constant for the gradient (as ``dora_weight(detach_norm=True)``), and the backward pass keeps only W0
    (the frozen weight itself, not an fp32 copy), the thin factors and the norms — not a full-size fp32
    matrix per layer, several GB on SDXL."""
    return _DoraLoraChange.apply(w0, up, down, magnitude, float(scale), axis)


class _DoraLoraChange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w0, up, down, magnitude, scale, axis):
        ctx.compute = torch.promote_types(w0.dtype, torch.float32)  # fp32 at least (fp64 stays fp64)
        f = lambda t: t.to(ctx.compute)  # noqa: E731
        combined = f(w0) + (f(up).flatten(1) @ f(down).flatten(1)).reshape(w0.shape) * scale
        norm = column_norm(combined, axis) + _NORM_EPS
        factor = f(magnitude).reshape(norm.shape) / norm
        ctx.save_for_backward(w0, up, down, magnitude, norm)
        ctx.scale, ctx.axis = scale, axis
        return combined * factor - f(w0)

    @staticmethod
    def backward(ctx, grad):
        w0, up, down, magnitude, norm = ctx.saved_tensors
        f = lambda t: t.to(ctx.compute)  # noqa: E731
        up2, down2 = f(up).flatten(1), f(down).flatten(1)
        combined = f(w0) + (up2 @ down2).reshape(w0.shape) * ctx.scale
        factor = f(magnitude).reshape(norm.shape) / norm
        grad_combined = (grad * factor).reshape(w0.shape[0], -1)
        # ∂/∂m of m·C/‖C‖ with ‖C‖ constant: Σ over the normalised axis of grad·C/‖C‖
        per_entry = grad * combined / norm
        if ctx.axis == "out":
            grad_m = per_entry.reshape(w0.shape[0], -1).sum(dim=1)
        else:
            grad_m = per_entry.transpose(0, 1).reshape(w0.shape[1], -1).sum(dim=1)
        grad_up = (grad_combined @ down2.t()) * ctx.scale
        grad_down = (up2.t() @ grad_combined) * ctx.scale
        return (None, grad_up.reshape(up.shape).to(up.dtype), grad_down.reshape(down.shape).to(down.dtype),
                grad_m.reshape(magnitude.shape).to(magnitude.dtype), None, None)


__all__ = ["tucker", "lora_delta", "loha_delta", "lokr_delta", "dora_axis", "column_norm", "dora_weight",
           "dora_lora_change"]
