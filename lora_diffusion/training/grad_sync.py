"""Averaging the adapter's gradients across data-parallel processes without DDP.

DDP synchronises gradients from hooks inside the backward pass, which CUDA-graph replay bypasses;
the adapter is small (a rank-16 SDXL LoRA is ~23 M values), so one all-reduce of all its gradients
flattened into a single buffer, after the backward, costs well under a millisecond over NVLink.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Replace each parameter's gradient by its mean over the ``world`` processes (one collective)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or world <= 1:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
