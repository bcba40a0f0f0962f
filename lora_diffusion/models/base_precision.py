"""How the frozen base is stored while a LoRA trains (QLoRA's lesson): half precision, or 8/4 bits.

``auto`` keeps the training dtype; ``bf16``/``fp16`` name it; ``int8``, ``fp8`` and ``nf4`` store the
weights of the frozen Linear layers quantized through torchao (weight-only: activations and the
LoRA side paths stay in the training dtype, gradients flow through the dequantized weight). The
adapter's own tensors are never quantized, and the file written is the same as from a full base.

Convolutions stay in the training dtype: torchao's weight-only formats cover Linear layers, which
hold the attention and feed-forward weights (about half of an SD1.5 UNet, most of SDXL's).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import UserError
from ..startup import restore_import
from .precisions import QUANTIZED

_NF4_BLOCK = 64  # values per NF4 scale (the QLoRA paper's block size)


def _torchao(flag_value: str):
    logging.getLogger("torchao").setLevel(logging.ERROR)
    restore_import("torchao")  # the CLI keeps diffusers from importing it; we do, when asked to quantize
    try:
        import torchao.quantization as quantization
    except ImportError:
        raise UserError(f"--base-precision {flag_value} stores the base through torchao, which is not installed; "
                        "pip install torchao (or use --base-precision auto)") from None
    return quantization


def check_quantization_available(precision: str, device: torch.device) -> None:
    """One error line when this machine cannot store the base as ``precision`` (before any model is loaded);
    combinations with other settings are the plan's to check (``plan.check_combinations``)."""
    if precision not in QUANTIZED:
        return
    _torchao(precision)
    if precision == "fp8":
        if device.type != "cuda":
            raise UserError("--base-precision fp8 needs a CUDA GPU with fp8 support (compute capability 8.9+: "
                            "Ada or Hopper); on this device use --base-precision int8")
        capability = torch.cuda.get_device_capability(device)
        if capability < (8, 9):
            raise UserError(f"--base-precision fp8 needs compute capability 8.9+ (Ada, Hopper); this GPU has "
                            f"{capability[0]}.{capability[1]}: use --base-precision int8 or nf4")


def _frozen_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every frozen Linear of ``model`` that is part of the base (LoRA's own layers excluded)."""
    adapter_parts = (".lora_A.", ".lora_B.", ".lora_dense.")
    return [(path, m) for path, m in model.named_modules()
            if type(m) is nn.Linear and not m.weight.requires_grad and not any(p in f".{path}." for p in adapter_parts)]


def _scaler_block(n_scalers: int) -> int | None:
    """The largest divisor of ``n_scalers`` up to 256 (torchao's NF4 double-quantizes scales in blocks)."""
    for size in range(min(256, n_scalers), 0, -1):
        if n_scalers % size == 0:
            return size
    return None


def _to_nf4(weight: torch.Tensor) -> torch.Tensor | None:
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4

    if weight.numel() % _NF4_BLOCK:
        return None
    scaler_block = _scaler_block(weight.numel() // _NF4_BLOCK)
    return to_nf4(weight.detach().to(torch.bfloat16), block_size=_NF4_BLOCK, scaler_block_size=scaler_block)


def quantize_frozen(model: nn.Module, precision: str, device: torch.device | str) -> int:
    """Move ``model``'s frozen Linear weights to ``device`` stored as ``precision``; returns how many.

    Layer by layer, so the full-precision model is never on the device at once.
    """
    quantization = _torchao(precision)
    config = {"int8": lambda: quantization.Int8WeightOnlyConfig(),
              "fp8": lambda: quantization.Float8WeightOnlyConfig()}.get(precision)
    count = 0
    for _, linear in _frozen_linears(model):
        linear.to(device)
        if precision == "nf4":
            packed = _to_nf4(linear.weight)
            if packed is None:
                continue
            linear.weight = nn.Parameter(packed, requires_grad=False)
        else:
            quantization.quantize_(linear, config())
        count += 1
    return count


def is_quantized(weight: torch.Tensor) -> bool:
    """True for a weight stored as a torchao tensor subclass (no exact merge into it is possible)."""
    return type(weight.data) is not torch.Tensor


def stored_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters and buffers take as stored (quantized weights at their packed size)."""
    total = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        inner = tensor.data
        if type(inner) is torch.Tensor:
            total += inner.numel() * inner.element_size()
        else:
            names, _ = inner.__tensor_flatten__()
            total += sum(getattr(inner, n).numel() * getattr(inner, n).element_size() for n in names)
    return total


__all__ = ["QUANTIZED", "check_quantization_available", "quantize_frozen", "is_quantized", "stored_bytes"]
