"""An exponential moving average of the LoRA weights (``--ema-decay``, ai-toolkit's and kohya's EMA): a float32 copy
beside each trained tensor, moved toward it after every applied update (ema ← ema + (1 − decay)·(w − ema)). The
adapter files are written from the average; the raw weights keep training. Checkpoints hold the average, so a
resumed run continues it exactly."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


class LoraEma:
    """The average of ``params`` (the trained LoRA tensors, in the optimizer's order) at ``decay``."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().float().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average, after an applied optimizer update."""
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The average in the parameters for the duration (a file is written from them), the raw weights after."""
        raw = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, average in zip(self.params, self.shadow):
                p.copy_(average.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, weights in zip(self.params, raw):
                    p.copy_(weights)

    def state(self) -> dict[str, torch.Tensor]:
        """The average as named tensors (a checkpoint's ``ema.safetensors``)."""
        return {f"ema.{i:05d}": t.detach().cpu().contiguous() for i, t in enumerate(self.shadow)}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from a checkpoint's average."""
        if len(state) != len(self.shadow):
            raise ValueError(f"the checkpoint's EMA has {len(state)} tensors, this run's LoRA {len(self.shadow)}")
        with torch.no_grad():
            for i, t in enumerate(self.shadow):
                t.copy_(state[f"ema.{i:05d}"].to(t.device))
