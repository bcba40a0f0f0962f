"""Validation loss (``--validation-split``): the denoising loss on images held out of training, with the same
noise, noise levels and latent samples at every evaluation, so its curve compares steps with each other — it
rises when the LoRA starts to learn its training images rather than their style."""

from __future__ import annotations

import random

import torch

from ..data.dataset import TrainingData
from ..errors import UserError
from .objective import Share
from .step_inputs import StepInputs

VALIDATION_SEED = 1_234_567  # the evaluation's own stream: never a training step's


def split_examples(examples: list, share: float, seed: int) -> tuple[list, list]:
    """(training examples, held-out examples): ``share`` of them (at least one), chosen by ``seed``."""
    if not share:
        return examples, []
    if len(examples) < 2:
        raise UserError(f"--validation-split {share:g} needs at least 2 images (found {len(examples)}): add images "
                        "or leave --validation-split at 0")
    count = max(1, round(share * len(examples)))
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def validation_interval(every: int, steps: int) -> int:
    """Steps between evaluations: ``every``, or 0 → about 20 points over the run."""
    return every or max(1, steps // 20)


class ValidationLoss:
    """The held-out images' loss, evaluated by ``__call__(run)``; their latents and text states are encoded once,
    before the encoders leave the GPU."""

    def __init__(self, examples: list, cfg, vae, conditioning, device: torch.device, text_trained: bool):
        # centre crops, no flip, no caption dropout or shuffle: the same inputs every time
        self.data = TrainingData([type(e)(e.path, e.caption, 1) for e in examples], cfg.resolution, crop="center",
                                 bucketing=bool(cfg.bucketing), seed=cfg.seed)
        self.inputs = StepInputs(vae, conditioning, device, cache_latents=True, cache_text=not text_trained)
        self.batch = max(1, cfg.batch_size)
        self.inputs.encode_all(self.data, self.batch)
        self.images = len(self.data.items)

    def batches(self) -> list[list[int]]:
        """Index batches of one image shape each (buckets), in a fixed order."""
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(self.data.sizes):
            by_shape.setdefault(size, []).append(i)
        return [ids[k:k + self.batch] for ids in by_shape.values() for k in range(0, len(ids), self.batch)]

    @torch.no_grad()
    def __call__(self, run) -> float:
        """The mean loss over the held-out images, at the adapter's current weights (dropout off)."""
        model, cfg, device = run.denoiser.model, run.cfg, run.accelerator.device
        model.eval()
        total, count = 0.0, 0
        try:
            for n, ids in enumerate(self.batches()):
                generator = torch.Generator(device=device) if device.type == "cuda" else torch.Generator()
                generator.manual_seed(VALIDATION_SEED + n)
                latents = self.inputs.latent_batch([(i, False) for i in ids], lambda key: self.data.pixels(key[0], 0),
                                                   generator)
                geometries = [self.data.geometry(i, 0) for i in ids]
                states, added = self.inputs.unet_conditioning([self.data.items[i].caption for i in ids], geometries,
                                                              trainable=False)
                with run.accelerator.autocast():
                    loss = run.objective.loss(model, latents.to(run.weight_dtype), states, generator,
                                              added_cond_kwargs=added, min_snr_gamma=cfg.min_snr_gamma,
                                              noise_offset=cfg.noise_offset, share=Share(0, len(ids)),
                                              timesteps=(cfg.min_timestep, cfg.max_timestep))
                total += float(loss) * len(ids)
                count += len(ids)
        finally:
            run.train_mode()
        return total / count
