"""The UNet's forward and backward replayed as CUDA graphs: no compiler, captured in seconds.

An SD UNet step launches thousands of small kernels (SDXL: about ten thousand per forward and
backward); from Python each launch costs more than the GPU work at batch 1-4, so the eager step
is bound by the CPU. ``torch.cuda.make_graphed_callables`` records the kernels of one forward and
one backward once and replays them with two launches. Each input shape (bucket) gets its own pair
of graphs, all drawing on one memory pool: steps run one after another, so a graph's intermediate
memory is free again before the next graph runs.

Limits, checked by the caller (plan.py): no gradient accumulation (the graphs' gradient
buffers are handed to the parameters, and a second backward before the optimizer step would
overwrite them), no trained text encoder (its gradients flow through the UNet's inputs), no fp16 autocast.
With several processes the trainer averages the gradients itself (grad_sync.py): DDP's hooks do not run
inside a replayed graph.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn


def release_rng_from_failed_capture(device: torch.device) -> None:
    """Give the device's default CUDA generator a fresh state after a capture that failed midway.

    A capture registers the generator for graph-safe offsets; when it fails, the capture never
    ends and the generator stays registered, so every later random op (the step's noise) raises
    "Offset increment outside graph capture encountered unexpectedly". A clone of the state keeps
    the seed and offset, without the capture registration.
    """
    generator = torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    generator.graphsafe_set_state(generator.clone_state())


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

    def __init__(self, unet: nn.Module, report: Callable[[str], None] = lambda text: None) -> None:
        self.unet = unet
        self.module = _PositionalUNet(unet)
        self.pool = torch.cuda.graph_pool_handle()
        self.graphed: dict[tuple, object] = {}
        self.report = report
        self.failed: str | None = None  # why capture failed; the step then runs eagerly

    def __call__(self, sample, timesteps, states, added_cond_kwargs=None):
        inputs = (sample, timesteps.expand(sample.shape[0]).contiguous(), states)
        if added_cond_kwargs:
            inputs += (added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"])
        if self.failed:
            return SimpleNamespace(sample=self.module(*inputs))
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        if key not in self.graphed:
            started = time.perf_counter()
            # the capture runs a few untimed warm-up passes through autograd.grad (no .grad is touched)
            samples = tuple(t.detach().clone() for t in inputs)
            try:
                # one warm-up pass creates the library workspaces capture needs (3, the default, is for DDP)
                self.graphed[key] = torch.cuda.make_graphed_callables(self.module, samples, pool=self.pool,
                                                                      num_warmup_iters=1)
            except Exception as error:  # noqa: BLE001 - an op that cannot be captured: run eagerly instead
                self.failed = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}" if str(error) else type(error).__name__
                torch.cuda.synchronize()
                release_rng_from_failed_capture(sample.device)
                self.report(f"warning: CUDA graph capture failed ({self.failed}); the step runs eagerly")
                return SimpleNamespace(sample=self.module(*inputs))
            size = "x".join(map(str, sample.shape[1:]))
            self.report(f"CUDA graphs: captured the UNet step for batch {sample.shape[0]} of {size} latents "
                        f"in {time.perf_counter() - started:.1f} s")
        return SimpleNamespace(sample=self.graphed[key](*inputs))

    @property
    def shapes(self) -> int:
        return len(self.graphed)

    def train(self, mode: bool = True) -> "GraphedUNet":
        self.unet.train(mode)
        return self

    def eval(self) -> "GraphedUNet":
        return self.train(False)
