"""The denoising loss of one batch: noise, timesteps, target, weighting."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError


@dataclass(frozen=True)
class Share:
    """This process's rows ``[start, start + n)`` of a global batch of ``total`` rows. Every random draw
    is made for the whole global batch and sliced, so N processes at batch B compute what one process
    computes at batch N·B (and a lone process, ``Share(0, B)``, draws exactly as before)."""

    start: int
    total: int

    def randn(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        full = torch.randn((self.total, *shape[1:]), generator=generator, device=generator.device)
        return full[self.start : self.start + shape[0]]

    def rand(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        full = torch.rand((self.total, *shape[1:]), generator=generator, device=generator.device)
        return full[self.start : self.start + shape[0]]

    def randint(self, high: int, n: int, generator: torch.Generator, low: int = 0) -> torch.Tensor:
        full = torch.randint(low, high, (self.total,), generator=generator, device=generator.device)
        return full[self.start : self.start + n]


def draw_noise(latents: torch.Tensor, share: Share, generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """The batch's noise, shaped like ``latents`` (plus a per-channel offset when ``noise_offset``): this
    process's rows of the global batch's draw."""
    noise = share.randn(tuple(latents.shape), generator).to(latents.device, latents.dtype)
    if noise_offset:
        offset = share.randn((latents.shape[0], latents.shape[1], 1, 1), generator).to(latents.device, latents.dtype)
        noise = noise + noise_offset * offset
    return noise


def masked_mean(error: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Each sample's mean of ``error`` (B×C×h×w) over its pixels, weighted by ``mask`` (B×1×h×w; None: all
    count): what lies outside the mask adds nothing to the loss and gets no gradient. A sample whose mask is empty
    adds zero."""
    if mask is None:
        return error.mean(dim=(1, 2, 3))
    mask = mask.to(error.device, error.dtype)
    weight = mask.sum(dim=(1, 2, 3)) * error.shape[1]
    return (error * mask).sum(dim=(1, 2, 3)) / weight.clamp_min(1e-8)


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    alpha = alphas_cumprod.to(timesteps.device)[timesteps]
    return alpha / (1 - alpha)


def denoising_loss(unet, scheduler, latents: torch.Tensor, text_states: torch.Tensor, generator: torch.Generator,
                   *, added_cond_kwargs: dict | None = None, min_snr_gamma: float = 0.0,
                   noise_offset: float = 0.0, share: Share | None = None,
                   timesteps: tuple[int, int] | None = None, mask: torch.Tensor | None = None,
                   sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss of predicting noise (epsilon) or velocity (v_prediction), per the scheduler config.

    ``added_cond_kwargs`` carries SDXL's pooled text embedding and size conditioning; ``timesteps`` is the
    [low, high) range timesteps are drawn from (default: all of the scheduler's); ``mask`` (B×1×h×w at the
    latents' size) weights each latent pixel's error (``masked_mean``); ``sample_weights`` (B) each sample's loss
    (regularization images at ``--prior-loss-weight``).
    Randomness comes only from ``generator`` (on the CPU, or on the GPU when training there),
    so a step's loss is a pure function of its inputs and the generator's seed: resumed runs match.
    """
    b = latents.shape[0]
    share = share or Share(0, b)
    noise = draw_noise(latents, share, generator, noise_offset)
    low, high = timesteps or (0, scheduler.config.num_train_timesteps)
    timesteps = share.randint(min(high, scheduler.config.num_train_timesteps), b, generator, low=low).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r} in the base model's scheduler")
    pred = unet(noisy, timesteps, text_states, added_cond_kwargs=added_cond_kwargs).sample
    loss = masked_mean(F.mse_loss(pred.float(), target.float(), reduction="none"), mask)
    if min_snr_gamma:
        ratio = snr(scheduler.alphas_cumprod, timesteps)
        clipped = torch.clamp(ratio, max=min_snr_gamma)
        # Hang et al. 2023: min(SNR, γ)/SNR for epsilon, min(SNR, γ)/(SNR + 1) for v
        weight = clipped / ratio if prediction_type == "epsilon" else clipped / (ratio + 1)
        loss = loss * weight
    if sample_weights is not None:
        loss = loss * sample_weights.to(loss.device, loss.dtype)
    return loss.mean()


class DdpmObjective:
    """DDPM training of an SD-style denoiser (``Family.objective`` builds it from the base's scheduler config)."""

    def __init__(self, scheduler_config):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(scheduler_config)

    def configure(self, timestep_sampling: str, discrete_flow_shift: float, train_guidance: float) -> None:
        """The rectified-flow settings have no meaning here: set away from their defaults, one line says so."""
        if timestep_sampling != "auto" or discrete_flow_shift != 3.0 or train_guidance != 1.0:
            raise UserError("--timestep-sampling, --discrete-flow-shift and --train-guidance apply to rectified-flow "
                            "bases (FLUX.1, SD3); this base trains with DDPM noise: use --min-timestep/--max-timestep "
                            "or --min-snr-gamma instead")

    def loss(self, denoiser, latents: torch.Tensor, text_states: torch.Tensor, generator: torch.Generator, *,
             added_cond_kwargs: dict | None, min_snr_gamma: float, noise_offset: float, share: Share,
             timesteps: tuple[int, int] | None = None, mask: torch.Tensor | None = None,
             sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's mean loss (see ``denoising_loss``)."""
        return denoising_loss(denoiser, self.scheduler, latents, text_states, generator,
                              added_cond_kwargs=added_cond_kwargs, min_snr_gamma=min_snr_gamma,
                              noise_offset=noise_offset, share=share, timesteps=timesteps, mask=mask,
                              sample_weights=sample_weights)
