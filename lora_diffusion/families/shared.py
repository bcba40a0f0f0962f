"""What several families share: readings of a denoiser config, the DDPM objective, the UNet's native size."""

from __future__ import annotations


def cross_attention_dim(config: dict) -> int | None:
    """The UNet's text width (a list in some configs: the first entry)."""
    dim = config.get("cross_attention_dim")
    if isinstance(dim, (list, tuple)):
        dim = dim[0] if dim else None
    return int(dim) if dim else None


def sd_checkpoint(keys: frozenset) -> bool:
    """An original-layout (CompVis/Stability) single-file checkpoint: its UNet under ``model.diffusion_model.``."""
    return any(k.startswith("model.diffusion_model.") for k in keys)


def ddpm_objective(pipe):
    """The SD-style objective: DDPM noise on latents, epsilon or v prediction per the base's scheduler."""
    from ..training.objective import DdpmObjective  # the step math; imported when a run builds it

    return DdpmObjective(pipe.scheduler.config)


def unet_native_resolution(configs: dict[str, dict]) -> int:
    """The pixel size a UNet base was trained at: its latent sample size times the VAE's down-scaling (each VAE
    block after the first halves the size, as diffusers' ``vae_scale_factor`` says)."""
    blocks = len(configs.get("vae", {}).get("block_out_channels", (0, 0, 0, 0)))
    return int(configs["unet"]["sample_size"]) * 2 ** (blocks - 1)
