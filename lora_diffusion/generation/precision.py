"""The dtype generation runs in: half precision on CUDA GPUs (as A1111 and ComfyUI do), fp32 elsewhere."""

from __future__ import annotations

import torch

from ..errors import UserError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def generation_dtype(choice: str, device: str) -> torch.dtype:
    """``auto``: fp16 on CUDA (diffusers' SDXL pipeline upcasts its VAE where the config asks), fp32 on the
    CPU, where half precision is slow; or the named one."""
    choice = (choice or "auto").strip().lower()
    if choice == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    if choice not in DTYPES:
        raise UserError(f"--dtype {choice!r} is not known; choose auto, fp16, bf16 or fp32")
    return DTYPES[choice]
