"""A step's inputs: the frozen VAE and text encoder(s) as the training loop uses them, with caches of their outputs.

Latents are cached as each image's posterior (mean, std), so every step still draws a fresh
sample; text outputs are cached per caption. Both caches live on the training device: per-step
host-to-device copies from pageable memory would stall the GPU queue.
"""

from __future__ import annotations

from typing import Callable, Hashable

import torch

from ..data.dataset import Geometry
from ..data.prefetch import Prefetcher, default_workers
from .objective import Share


# the up-front pass encodes about four 512 px images per VAE call whatever the training batch (batch-1
# calls are launch-bound on a GPU) and it runs before the UNet joins the device, so below the training peak;
# captions are short sequences: 64 per text-encoder call
ENCODE_PASS_PIXELS = 4 * 512 * 512
TEXT_PASS_BATCH = 64


def encode_pass_batch(batch_size: int, resolution: int) -> int:
    """Images per VAE call in the up-front encode pass: the training batch, or more at small sizes."""
    return max(batch_size, min(64, ENCODE_PASS_PIXELS // (resolution * resolution)))


class StepInputs:
    """Images → latents and captions (+ geometry) → UNet conditioning, cached where allowed."""

    def __init__(self, vae, conditioning, device: torch.device, cache_latents: bool, cache_text: bool):
        self.vae, self.conditioning, self.device = vae, conditioning, device
        self.cache_latents, self.cache_text = cache_latents, cache_text
        self.latents: dict[Hashable, tuple[torch.Tensor, torch.Tensor]] = {}
        self.text: dict[str, dict[str, torch.Tensor]] = {}
        self.staged: tuple[list[Hashable], dict] | None = None  # (keys, their posteriors): see stage()
        self.scaling = vae.config.scaling_factor
        self.shift = getattr(vae.config, "shift_factor", None) or 0.0

    @torch.no_grad()
    def posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()  # an asynchronous copy: the host goes on preparing the next batch
        dist = self.vae.encode(pixels.to(self.device, self.vae.dtype, non_blocking=True)).latent_dist
        return dist.mean.float(), dist.std.float()

    def _encode_missing(self, keys: list[Hashable],
                        pixels_for: Callable[[Hashable], torch.Tensor]) -> dict[Hashable, tuple[torch.Tensor, torch.Tensor]]:
        missing = list(dict.fromkeys(k for k in keys if k not in self.latents))
        if not missing:
            return {}
        mean, std = self.posterior(torch.stack([pixels_for(k) for k in missing]))
        return {key: (mean[n : n + 1], std[n : n + 1]) for n, key in enumerate(missing)}

    def stage(self, keys: list[Hashable], pixels_for: Callable[[Hashable], torch.Tensor]) -> None:
        """Encode the next batch's uncached images now; the next ``latent_batch`` with the same keys takes them.

        The trainer calls this while the GPU still runs the current step, so the host's work for the
        next batch (stacking, pinning, launching the VAE) overlaps the step, and the VAE's kernels
        queue behind it instead of after the host's next round. Same images, same batch: same latents.
        """
        self.staged = (list(keys), self._encode_missing(keys, pixels_for))

    def latent_batch(self, keys: list[Hashable], pixels_for: Callable[[Hashable], torch.Tensor],
                     generator: torch.Generator, share: Share | None = None) -> torch.Tensor:
        """Latents of the batch sampled from each posterior with ``generator``; cached, staged or encoded now.
        ``keys`` name the samples' fixed images, (index, flipped), and ``pixels_for`` makes one."""
        staged, self.staged = self.staged, None
        fresh = staged[1] if staged is not None and staged[0] == list(keys) else self._encode_missing(keys, pixels_for)
        if self.cache_latents:
            self.latents.update(fresh)
        pairs = [fresh[k] if k in fresh else self.latents[k] for k in keys]
        mean = torch.cat([m.to(self.device) for m, _ in pairs])
        std = torch.cat([s.to(self.device) for _, s in pairs])
        share = share or Share(0, len(keys))
        sample = mean + std * share.randn(tuple(mean.shape), generator).to(self.device)
        return (sample - self.shift) * self.scaling

    def encode_all(self, data, batch_size: int) -> None:
        """Fill both caches for every example up front (their inputs do not depend on the epoch).
        Images are encoded ``batch_size`` at a time within each bucket (one image shape per batch)."""
        generator = torch.Generator().manual_seed(0)  # only the posterior means/stds are kept
        by_shape: dict[tuple[int, int], list] = {}
        for i in range(len(data.items)):
            for flipped in (False, True) if data.flip else (False,):
                by_shape.setdefault(data.sizes[i], []).append((i, flipped))
        batches = [keys[start:start + batch_size] for keys in by_shape.values()
                   for start in range(0, len(keys), batch_size)]
        # images are decoded on worker threads while the VAE encodes the batches before them
        prefetch = Prefetcher(lambda key: data.pixels(key[0], 0, key[1]), default_workers())
        try:
            prefetch.want([key for batch in batches for key in batch])
            for batch in batches:
                self.latent_batch(batch, prefetch.get, generator)
        finally:
            prefetch.close()
        captions = data.possible_captions()
        for start in range(0, len(captions), TEXT_PASS_BATCH):
            self.text_outputs(captions[start:start + TEXT_PASS_BATCH], trainable=False)

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
