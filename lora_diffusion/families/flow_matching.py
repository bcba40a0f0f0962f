"""The rectified-flow objective FLUX.1 and SD3 train with: x_σ = (1 − σ)·x₀ + σ·ε, the transformer predicts ε − x₀.

``FlowMatchObjective`` holds the math; ``FluxObjective`` and ``Sd3Objective`` say how each transformer is called.

σ is drawn by ``--timestep-sampling``: ``sigmoid``/``logit-normal`` (a sigmoid of a standard normal: the middle noise
levels, where the image is decided, most often — SimpleTuner's and ai-toolkit's default, FLUX's here), ``shift``
(that, shifted toward noise by kohya's ``discrete_flow_shift``: SD3's default, 3), ``uniform``, or ``flux-shift``
(FLUX's resolution-dependent shift: μ grows linearly with the packed token count from 0.5 at 256 tokens to 1.15 at
4096, as FluxPipeline samples). A run's ``--min-timestep``/``--max-timestep`` (out of 1000) bound σ.
FLUX's latents go in as 2×2 patches with their (row, column) position ids, and a guidance-distilled base (dev)
gets a constant guidance value, as at generation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..training.objective import Share, draw_noise, masked_mean

TRAINING_GUIDANCE = 1.0  # kohya and SimpleTuner feed dev a guidance of 1 while training
# FluxPipeline's resolution-dependent shift: μ linear in the image's token count between these points
FLUX_SHIFT = (256, 0.5, 4096, 1.15)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H/2·W/2, 4C): each 2×2 patch one token, as ``FluxPipeline._pack_latents``."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of ``pack`` for a latent of ``height`` × ``width``."""
    b, _, d = tokens.shape
    patches = tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, d // 4, height, width)


def image_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """(H/2·W/2, 3) position ids of the packed tokens: (0, row, column)."""
    ids = torch.zeros(height // 2, width // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(height // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(width // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


class FlowMatchObjective:
    """Rectified flow on latents; a subclass calls its transformer (``predict``)."""

    def __init__(self, shift: float = 1.0, sampling: str = "sigmoid"):
        self.shift, self.sampling = shift, sampling

    def configure(self, timestep_sampling: str, discrete_flow_shift: float, train_guidance: float) -> None:
        """A run's ``--timestep-sampling`` (``auto`` keeps the family's), shift and training guidance."""
        if timestep_sampling != "auto":
            self.sampling = timestep_sampling
            self.shift = discrete_flow_shift if timestep_sampling == "shift" else 1.0

    def sigmas(self, n: int, share: Share, generator: torch.Generator, window: tuple[int, int] | None,
               tokens: int = 4096) -> torch.Tensor:
        """σ of ``n`` examples whose latents are ``tokens`` 2×2 patches, within ``window`` (out of 1000)."""
        if self.sampling == "uniform":
            u = share.rand((n,), generator)
        else:
            u = torch.sigmoid(share.randn((n,), generator))
        if self.sampling == "flux-shift":
            low_tokens, low_mu, high_tokens, high_mu = FLUX_SHIFT
            mu = low_mu + (high_mu - low_mu) * (tokens - low_tokens) / (high_tokens - low_tokens)
            sigma = math.exp(mu) / (math.exp(mu) + (1 / u.clamp_min(1e-6) - 1))
        else:
            sigma = self.shift * u / (1 + (self.shift - 1) * u)
        low, high = window or (0, 1000)
        return low / 1000 + (high - low) / 1000 * sigma

    def predict(self, denoiser, noisy: torch.Tensor, sigma: torch.Tensor, text_states: torch.Tensor,
                added: dict) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, denoiser, latents: torch.Tensor, text_states: torch.Tensor, generator: torch.Generator, *,
             added_cond_kwargs: dict | None, min_snr_gamma: float = 0.0, noise_offset: float = 0.0,
             share: Share | None = None, timesteps: tuple[int, int] | None = None,
             mask: torch.Tensor | None = None, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's mean flow-matching loss (``min_snr_gamma`` is a DDPM weighting: not used here; ``mask``
        weights latent pixels as ``masked_mean`` says, ``sample_weights`` each sample's loss)."""
        b = latents.shape[0]
        share = share or Share(0, b)
        noise = draw_noise(latents, share, generator, noise_offset)
        tokens = (latents.shape[-2] // 2) * (latents.shape[-1] // 2)
        sigma = self.sigmas(b, share, generator, timesteps, tokens).to(latents.device, latents.dtype)
        noisy = (1 - sigma.view(b, 1, 1, 1)) * latents + sigma.view(b, 1, 1, 1) * noise
        pred = self.predict(denoiser, noisy, sigma, text_states, added_cond_kwargs or {})
        target = noise - latents
        loss = masked_mean(F.mse_loss(pred.float(), target.float(), reduction="none"), mask)
        if sample_weights is not None:
            loss = loss * sample_weights.to(loss.device, loss.dtype)
        return loss.mean()


class FluxObjective(FlowMatchObjective):
    """FLUX.1: 2×2-packed tokens with position ids, σ as the timestep, dev's guidance embedding fed 1."""

    def __init__(self, guidance_embeds: bool, shift: float = 1.0):
        super().__init__(shift, "sigmoid")
        self.guidance = TRAINING_GUIDANCE if guidance_embeds else None

    def configure(self, timestep_sampling: str, discrete_flow_shift: float, train_guidance: float) -> None:
        super().configure(timestep_sampling, discrete_flow_shift, train_guidance)
        if self.guidance is not None:
            self.guidance = train_guidance

    def predict(self, denoiser, noisy, sigma, text_states, added):
        b, _, h, w = noisy.shape
        txt_ids = torch.zeros(text_states.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
        guidance = None if self.guidance is None else torch.full((b,), self.guidance, device=noisy.device,
                                                                  dtype=noisy.dtype)
        pred = denoiser(hidden_states=pack(noisy), encoder_hidden_states=text_states,
                        pooled_projections=added["pooled_projections"], timestep=sigma,
                        img_ids=image_ids(h, w, noisy.device, noisy.dtype), txt_ids=txt_ids, guidance=guidance,
                        return_dict=False)[0]
        return unpack(pred, h, w)


class Sd3Objective(FlowMatchObjective):
    """SD3/SD3.5: the transformer patches the latents itself and takes σ × 1000 as its timestep; noise levels
    shifted toward noise by 3 (SD3's own scheduler shift, kohya's default ``discrete_flow_shift``)."""

    def __init__(self, shift: float = 3.0):
        super().__init__(shift, "shift")

    def predict(self, denoiser, noisy, sigma, text_states, added):
        return denoiser(hidden_states=noisy, encoder_hidden_states=text_states,
                        pooled_projections=added["pooled_projections"], timestep=sigma * 1000, return_dict=False)[0]
