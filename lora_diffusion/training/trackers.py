"""Experiment trackers (``--log-with``) through accelerate's: TensorBoard and Weights & Biases. ``auto`` keeps what a
run always did (TensorBoard when it is installed); wandb never needs a network: without an API key or with the
hub offline it logs offline, to be synced later with ``wandb sync``."""

from __future__ import annotations

import importlib.util
import os
import sys

from ..errors import UserError

CHOICES = ("auto", "none", "tensorboard", "wandb", "all")
PROJECT = "lora-diffusion"  # TensorBoard's subfolder of the log folder; wandb's project
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def _installed(name: str) -> bool:
    return importlib.util.find_spec(PACKAGES[name]) is not None


def trackers_for(choice: str) -> list[str]:
    """The accelerate tracker names ``--log-with choice`` asks for; a named one that is not installed is one line."""
    if choice == "none":
        return []
    if choice == "auto":
        return ["tensorboard"] if _installed("tensorboard") else []
    wanted = list(PACKAGES) if choice == "all" else [choice]
    for name in wanted:
        if not _installed(name):
            raise UserError(f"--log-with {choice} needs the package {PACKAGES[name]}: pip install {PACKAGES[name]} "
                            "(or --log-with auto)")
    return wanted


def wandb_offline_if_needed(trackers: list[str], report: bool) -> None:
    """A wandb run that cannot reach its server would wait and fail: offline unless a key is set and the
    environment is online (``WANDB_MODE`` set by the user always wins)."""
    if "wandb" not in trackers or os.environ.get("WANDB_MODE"):
        return
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or not os.environ.get("WANDB_API_KEY")
    if offline:
        os.environ["WANDB_MODE"] = "offline"
        if report:
            print("wandb: logging offline (no WANDB_API_KEY, or offline); upload later with `wandb sync` on the "
                  "run folder", file=sys.stderr)


def tracker_config(cfg) -> dict:
    """The run's settings as trackers take them: scalars and strings only."""
    from .config import to_dict

    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in to_dict(cfg).items()
            if v is not None}
