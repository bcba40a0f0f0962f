"""The UNet's forward and backward replayed as CUDA graphs: no compiler, captured in seconds.

An SD UNet step launches thousands of small kernels (SDXL: about ten thousand per forward and
backward); from Python each launch costs more than the GPU work at batch 1-4, so the eager step
is bound by the CPU. ``torch.cuda.make_graphed_callables`` records the kernels of one forward and
one backward once and replays them with two launches. Each input shape (bucket) gets its own pair
of graphs, all drawing on one memory pool: steps run one after another, so a graph's intermediate
memory is free again before the next graph runs.

Limits, checked by the caller: one process, no gradient accumulation (the graphs' gradient
buffers are handed to the parameters, and a second backward before the optimizer step would
overwrite them), no trained text encoder (its gradients flow through the UNet's inputs).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


class _PositionalUNet(nn.Module):
    """The UNet with tensor-only positional inputs and a tensor output, as graph capture needs."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample, timesteps, states, text_embeds=None, time_ids=None):
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(sample, timesteps, states, added_cond_kwargs=added).sample


class GraphedUNet:
    """Called like the UNet in training (returns an object with ``.sample``); replays CUDA graphs."""

    def __init__(self, unet: nn.Module) -> None:
        self.unet = unet
        self.module = _PositionalUNet(unet)
        self.pool = torch.cuda.graph_pool_handle()
        self.graphed: dict[tuple, object] = {}

    def __call__(self, sample, timesteps, states, added_cond_kwargs=None):
        inputs = (sample, timesteps.expand(sample.shape[0]).contiguous(), states)
        if added_cond_kwargs:
            inputs += (added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"])
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        if key not in self.graphed:
            # the capture runs a few untimed warm-up passes through autograd.grad (no .grad is touched)
            samples = tuple(t.detach().clone() for t in inputs)
            self.graphed[key] = torch.cuda.make_graphed_callables(self.module, samples, pool=self.pool)
        return SimpleNamespace(sample=self.graphed[key](*inputs))

    @property
    def shapes(self) -> int:
        return len(self.graphed)

    def train(self, mode: bool = True) -> "GraphedUNet":
        self.unet.train(mode)
        return self

    def eval(self) -> "GraphedUNet":
        return self.train(False)
