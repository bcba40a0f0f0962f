"""The generation defaults, in one place: the CLI's flags, PNG parameters and the engine's callers use these."""

DEFAULT_STEPS = 20
DEFAULT_CFG = 5.0
DEFAULT_SAMPLER = "DPM++ 2M"
