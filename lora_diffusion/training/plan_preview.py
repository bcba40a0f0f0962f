"""The plan a run would print, before it starts: the data scanned and the base's configs read, no weight loaded.
The UI shows it before its Start button is pressed (and the CLI's ``train`` prints the same block once the base
has loaded)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..data.dataset import require_examples
from ..models.base_configs import read_base_configs
from .config import TrainConfig
from .plan import BaseFacts, DeviceFacts, Plan, derive_plan
from .run_setup import dataset_of, load_examples


def preview_plan(cfg: TrainConfig, device: DeviceFacts | None = None) -> tuple[Plan | None, str]:
    """(the plan, its printed block) for ``cfg``; (None, why) when only loading the base can tell its facts."""
    cfg.validate()
    with tempfile.TemporaryDirectory(prefix="lora-diffusion-preview-") as cache:
        examples, skipped = load_examples(cfg, Path(cache), dataset_of(cfg))
    require_examples(examples, skipped)
    images = sum(e.repeats for e in examples)
    configs = read_base_configs(cfg.base)
    if configs is None:
        return None, (f"{images} images; base {cfg.base} is read when training starts, and the plan is shown "
                      "then (a hub id or pickle file has no configs to read before it loads)")
    device = device or DeviceFacts.detect()
    plan = derive_plan(cfg, BaseFacts.of_configs(configs), images, device)
    return plan, plan.describe(images, device)
