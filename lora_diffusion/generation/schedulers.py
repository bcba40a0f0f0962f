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


# rectified-flow bases (FLUX.1, SD3): their schedulers step σ from 1 to 0, with the base's own shift
FLOW_SAMPLERS: dict[str, tuple[str, dict]] = {
    "Euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "Heun": ("FlowMatchHeunDiscreteScheduler", {}),
}


def sampler_names() -> list[str]:
    return list(SAMPLERS)


def is_flow(base_config) -> bool:
    """Whether a base's scheduler config is a rectified-flow one."""
    return str(dict(base_config).get("_class_name", "")).startswith("FlowMatch")


def make_scheduler(name: str, base_config):
    """A fresh scheduler of kind ``name`` sharing the base's betas and prediction type (or, for a rectified-flow
    base, its shift)."""
    import diffusers

    table = FLOW_SAMPLERS if is_flow(base_config) else SAMPLERS
    key = next((k for k in table if k.lower() == name.strip().lower()), None)
    if key is None:
        kind = " for this rectified-flow base (FLUX.1, SD3)" if table is FLOW_SAMPLERS else ""
        raise UserError(f"unknown scheduler {name!r}{kind}; choose one of: {', '.join(table)}")
    cls_name, extra = table[key]
    return getattr(diffusers, cls_name).from_config(base_config, **extra)
