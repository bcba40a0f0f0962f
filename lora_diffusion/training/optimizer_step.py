"""One optimizer step: its micro-batches forward and backward, gradients clipped, the update applied only when the
loss and gradients are finite; and the policy for steps that were not (``NanPolicy``)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable

import torch

from ..errors import UserError
from .batch_feed import BatchFeed
from .grad_sync import average_gradients


def step_generator(seed: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """The step's own random stream, on the training device (no host-to-device copies of noise):
    a step's randomness depends only on (seed, step, micro-batch), so resumed runs match, and every
    process draws the same global-batch noise and keeps its own rows (objective.Share)."""
    generator = torch.Generator(device=device) if device.type == "cuda" else torch.Generator()
    return generator.manual_seed((seed * 1_000_003 + step * 101 + micro * 7) % (2**63 - 1))


class OptimizerStep:
    """``step(n)`` runs optimizer step ``n`` and returns (mean loss, whether loss and gradients were finite)."""

    def __init__(self, run, feed: BatchFeed):
        self.run, self.feed = run, feed
        self._layers = None  # the trained LoRA layers, for train_weight_min

    def __call__(self, step: int) -> tuple[float, bool]:
        weight = self._train_weight(step)
        try:
            return self._step(step, weight)
        finally:
            if weight != 1.0:
                self._set_weight(1.0)  # saving, sampling and checkpoints see the adapter at full weight

    def _train_weight(self, step: int) -> float:
        """``train_weight_min`` < 1: the step's LoRA weight, from its own stream (the step's noise is unchanged)."""
        low = self.run.cfg.train_weight_min
        if low >= 1:
            return 1.0
        draw = torch.Generator().manual_seed((self.run.cfg.seed * 7_919 + step * 104_729 + 17) % (2**63 - 1))
        weight = low + (1 - low) * float(torch.rand((), generator=draw))
        self._set_weight(weight)
        return weight

    def _set_weight(self, weight: float) -> None:
        from .run_setup import ADAPTER

        if self._layers is None:  # found once: the module tree is walked per run, not per step
            from ..lora.inject import lora_layers

            self._layers = [layer for model in self.run.trained.values() for layer in lora_layers(model).values()]
        for layer in self._layers:
            layer.set_weight(ADAPTER, weight)

    def _step(self, step: int, weight: float) -> tuple[float, bool]:
        run, cfg, accelerator = self.run, self.run.cfg, self.run.accelerator
        loss_sum, values, finite = None, [], True
        denoiser, scale = run.denoiser.forward, 1.0
        if cfg.train_weight_blend and weight < 1:
            denoiser, scale = BlendedDenoiser(denoiser, weight, self._set_weight), weight**2
        for micro in range(cfg.gradient_accumulation):
            index = step * cfg.gradient_accumulation + micro
            generator = step_generator(cfg.seed, step, micro, accelerator.device)
            with accelerator.accumulate(run.denoiser.prepared):
                batch = self.feed.batch(index, generator)
                with accelerator.autocast():
                    loss = scale * run.objective.loss(denoiser, batch.latents.to(run.weight_dtype),
                                              batch.text_states, generator, added_cond_kwargs=batch.added,
                                              min_snr_gamma=cfg.min_snr_gamma, noise_offset=cfg.noise_offset,
                                              share=batch.share, timesteps=(cfg.min_timestep, cfg.max_timestep),
                                              mask=batch.mask, sample_weights=batch.weights)
                accelerator.backward(loss)
                if run.own_sync and accelerator.sync_gradients:
                    average_gradients(run.params, accelerator.num_processes)
                mean_loss = accelerator.gather(loss.detach()).mean().float()
                loss_sum = mean_loss if loss_sum is None else loss_sum + mean_loss
                if accelerator.sync_gradients:
                    values = self._update(loss_sum, index)
                    finite = all(math.isfinite(v) for v in values)
                else:
                    self.feed.stage_after(index)
                run.optimizer.zero_grad(set_to_none=True)
        return values[0] / cfg.gradient_accumulation, finite

    def _update(self, loss_sum: torch.Tensor, index: int) -> list[float]:
        """Clip, read loss and gradient norm (the step's one host sync), and step when both are finite."""
        run, cfg = self.run, self.run.cfg
        # the norm is over gradients already averaged across processes, so every rank decides alike;
        # fp16's grad scaler handles overflowing gradients by itself
        norm = run.accelerator.clip_grad_norm_(run.params, cfg.max_grad_norm or float("inf"))
        checked = [loss_sum]
        if cfg.mixed_precision != "fp16" and norm is not None:
            checked.append(norm.float().reshape(()).to(loss_sum.device))
        # the next batch's encode queues behind the read
        values = read_after(torch.stack(checked), lambda: self.feed.stage_after(index))
        if all(math.isfinite(v) for v in values):
            run.optimizer.step()
            run.lr_scheduler.step()
            if run.ema is not None:
                run.ema.update()
        return values


class BlendedDenoiser:
    """The denoiser as ``train_weight_blend`` sees it at LoRA weight ``w`` < 1: (pred_w − (1 − w)·pred_0) / w, with
    pred_0 the base's own prediction (the LoRA at weight 0, no gradients). Against the unchanged target, w² times
    the loss is exactly ‖pred_w − (w·target + (1 − w)·pred_0)‖²: weight w is taught w of the way from what the base
    draws to the data, whatever the objective (noise, velocity or flow target)."""

    def __init__(self, forward, weight: float, set_weight: Callable[[float], None]):
        self.forward, self.weight, self.set_weight = forward, weight, set_weight

    def __call__(self, *args, **kwargs):
        self.set_weight(0.0)
        try:
            with torch.no_grad():
                base = _first(self.forward(*args, **kwargs))
        finally:
            self.set_weight(self.weight)
        out = self.forward(*args, **kwargs)
        blended = (_first(out) - (1 - self.weight) * base) / self.weight
        if isinstance(out, tuple):
            return (blended, *out[1:])
        return SimpleNamespace(sample=blended)


def _first(out) -> torch.Tensor:
    """The prediction in a denoiser's output: a tuple's first item (``return_dict=False``) or ``.sample``."""
    return out[0] if isinstance(out, tuple) else out.sample


class NanPolicy:
    """What a step with a NaN/inf loss or gradient does: skipped with a warning, until ``max_bad_steps`` in a row
    (or at once under ``nan_policy: stop``) end the run with one error line."""

    def __init__(self, policy: str, max_bad_steps: int):
        self.policy, self.max_bad_steps = policy, max_bad_steps
        self.in_a_row = self.skipped = 0

    def accept(self, step: int, finite: bool) -> bool:
        """Whether step ``step``'s update counts; raises when the run must stop."""
        if finite:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        if self.policy == "stop" or self.in_a_row >= self.max_bad_steps:
            why = "" if self.policy == "stop" else f" for {self.in_a_row} steps in a row"
            raise UserError(
                f"loss or gradients became NaN/inf at step {step}{why}; stopped (the last checkpoint is kept). "
                "Lower --lr, use --mixed-precision bf16 or no, or set nan_policy: skip"
            )
        return False


def read_after(values: torch.Tensor, work: Callable[[], None]) -> list[float]:
    """``values.tolist()`` with ``work`` done meanwhile; on a GPU, ``work``'s kernels queue behind the copy
    of ``values``, so the host waits for the step only, and the GPU is not idle while the host catches up."""
    if values.device.type != "cuda":
        work()
        return values.tolist()
    host = values.to("cpu", non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    work()
    copied.synchronize()
    return host.tolist()


__all__ = ["NanPolicy", "OptimizerStep", "read_after", "step_generator"]
