"""The frozen VAE and text encoder(s) as the training loop uses them, with caches of their outputs.

Latents are cached as each image's posterior (mean, std), so every step still draws a fresh
sample; text outputs are cached per caption. Both caches live on the training device: per-step
host-to-device copies from pageable memory would stall the GPU queue.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..data.dataset import Geometry


class Encoders:
    """Images → latents and captions (+ geometry) → UNet conditioning, cached where allowed."""

    def __init__(self, vae, conditioning, device: torch.device, cache_latents: bool, cache_text: bool):
        self.vae, self.conditioning, self.device = vae, conditioning, device
        self.cache_latents, self.cache_text = cache_latents, cache_text
        self.latents: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.text: dict[str, dict[str, torch.Tensor]] = {}
        self.scaling = vae.config.scaling_factor
        self.shift = getattr(vae.config, "shift_factor", None) or 0.0

    @torch.no_grad()
    def posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def latent_batch(self, indices: list[int], pixels_for: Callable[[int], torch.Tensor],
                     generator: torch.Generator) -> torch.Tensor:
        """Latents of the batch sampled from each posterior with ``generator``; cached or encoded now."""
        missing = [i for i in indices if i not in self.latents]
        fresh = {}
        if missing:
            mean, std = self.posterior(torch.stack([pixels_for(i) for i in missing]))
            fresh = {i: (mean[k : k + 1], std[k : k + 1]) for k, i in enumerate(missing)}
            if self.cache_latents:
                self.latents.update(fresh)
        pairs = [fresh[i] if i in fresh else self.latents[i] for i in indices]
        mean = torch.cat([m.to(self.device) for m, _ in pairs])
        std = torch.cat([s.to(self.device) for _, s in pairs])
        sample = mean + std * torch.randn(mean.shape, generator=generator, device=generator.device).to(self.device)
        return (sample - self.shift) * self.scaling

    def encode_all(self, data, batch_size: int) -> None:
        """Fill both caches for every example up front (their inputs do not depend on the epoch)."""
        generator = torch.Generator().manual_seed(0)  # only the posterior means/stds are kept
        indices = list(range(len(data.items)))
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            self.latent_batch(chunk, lambda i: data.pixels(i, 0), generator)
        captions = data.possible_captions()
        for start in range(0, len(captions), batch_size):
            self.text_outputs(captions[start:start + batch_size], trainable=False)

    def text_outputs(self, captions: list[str], trainable: bool) -> dict[str, torch.Tensor]:
        """The text encoders' outputs for a batch of captions (batched tensors by name)."""
        if trainable or not self.cache_text:
            with torch.set_grad_enabled(trainable):
                return self.conditioning.encode(captions, self.device)
        missing = [c for c in dict.fromkeys(captions) if c not in self.text]
        if missing:
            with torch.no_grad():
                outputs = self.conditioning.encode(missing, self.device)
            for k, caption in enumerate(missing):
                self.text[caption] = {name: value[k : k + 1] for name, value in outputs.items()}
        return {name: torch.cat([self.text[c][name] for c in captions]) for name in self.text[captions[0]]}

    def unet_conditioning(self, captions: list[str], geometries: list[Geometry],
                          trainable: bool) -> tuple[torch.Tensor, dict | None]:
        """(encoder_hidden_states, added_cond_kwargs) for the UNet."""
        return self.conditioning.unet_inputs(self.text_outputs(captions, trainable), geometries)
