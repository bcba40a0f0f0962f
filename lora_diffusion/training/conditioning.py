"""The trainer's conditioning for a loaded pipeline: its family decides (``families/<name>.py``); the two shapes
SD-style families share live in ``families/conditioning.py``."""

from __future__ import annotations

from ..errors import UserError
from ..families import family_of
from ..families.conditioning import SdxlEncoders, SingleEncoder

__all__ = ["SdxlEncoders", "SingleEncoder", "conditioning_for"]


def conditioning_for(pipe, base: str):
    """The conditioning of ``pipe``'s family, or a one-line error for bases training cannot handle."""
    family = family_of(pipe)
    if getattr(pipe, family.denoiser, None) is None:
        raise UserError(f"base {base}: no {family.denoiser} in this pipeline; training supports SD1.x, SD2.x, SDXL "
                        "and FLUX.1 bases")
    if family.conditioning is None:
        raise UserError(f"base {base}: training {family.label} bases is not supported yet")
    return family.conditioning(pipe, base)
