"""Samplers by the names A1111 and ComfyUI users know, built from the base's own scheduler config."""

from __future__ import annotations

from ..errors import UserError

# name -> (diffusers class, extra config)
SAMPLERS: dict[str, tuple[str, dict]] = {
    "DDIM": ("DDIMScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}


def sampler_names() -> list[str]:
    return list(SAMPLERS)


def make_scheduler(name: str, base_config):
    """A fresh scheduler of kind ``name`` sharing the base's betas and prediction type."""
    import diffusers

    key = next((k for k in SAMPLERS if k.lower() == name.strip().lower()), None)
    if key is None:
        raise UserError(f"unknown scheduler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    cls_name, extra = SAMPLERS[key]
    return getattr(diffusers, cls_name).from_config(base_config, **extra)
