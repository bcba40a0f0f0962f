"""The generation defaults, in one place: the CLI's flags, PNG parameters and the engine's callers use these.

Each base family names its own (``Family.generation``); ``SD_DEFAULTS`` are the Stable Diffusion families'.
"""

from dataclasses import dataclass

DEFAULT_STEPS = 20
DEFAULT_CFG = 5.0
DEFAULT_SAMPLER = "DPM++ 2M"


@dataclass(frozen=True)
class GenerationDefaults:
    """Steps, classifier-free guidance and sampler a base family generates with when the user gives none."""

    steps: int = DEFAULT_STEPS
    cfg: float = DEFAULT_CFG
    sampler: str = DEFAULT_SAMPLER


SD_DEFAULTS = GenerationDefaults()
