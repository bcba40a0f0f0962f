"""The optimizers a run can train with, one registry entry each: the package it needs, how it is built, the
learning rate that suits it when the profile's (chosen for AdamW) is not set by the user, and whether its
parameters must be swapped to their evaluation values before anything is written (schedule-free)."""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from ..errors import UserError

if TYPE_CHECKING:  # the CLI's parser reads the registry's names: no torch import for --help
    import torch


@dataclass(frozen=True)
class OptimizerKind:
    """One optimizer: ``module`` is imported (``package`` installs it); ``lr`` maps the profile's AdamW rate
    to this optimizer's, with why; ``schedules_itself``: the lr schedule is its own (constant outside)."""

    module: str
    package: str
    build: Callable[..., "torch.optim.Optimizer"]
    lr: Callable[[float], tuple[float, str]] = lambda adamw: (adamw, "")
    schedules_itself: bool = False
    evaluation_weights: bool = False  # train()/eval() modes: the files hold the eval-mode weights


def _adamw(torch, groups, cfg, device):
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=device.type == "cuda")


def _adamw8bit(bnb, groups, cfg, device):
    return bnb.optim.AdamW8bit(groups, weight_decay=cfg.weight_decay)


def _prodigy(prodigyopt, groups, cfg, device):
    # safeguard warm-up and bias correction: what Prodigy's README advises for diffusion fine-tuning
    return prodigyopt.Prodigy(groups, weight_decay=cfg.weight_decay, use_bias_correction=True,
                              safeguard_warmup=True)


def _adafactor(optimization, groups, cfg, device):
    # the given learning rate, not Adafactor's own relative step (kohya's LoRA guides' setting)
    return optimization.Adafactor(groups, scale_parameter=False, relative_step=False, warmup_init=False,
                                  weight_decay=cfg.weight_decay)


def _schedulefree(schedulefree, groups, cfg, device):
    return schedulefree.AdamWScheduleFree(groups, warmup_steps=cfg.lr_warmup_steps or 0,
                                          weight_decay=cfg.weight_decay)


def _lion(lion_pytorch, groups, cfg, device):
    return lion_pytorch.Lion(groups, weight_decay=cfg.weight_decay)


OPTIMIZERS: dict[str, OptimizerKind] = {
    "adamw": OptimizerKind("torch", "torch", _adamw),
    "adamw8bit": OptimizerKind("bitsandbytes", "bitsandbytes", _adamw8bit),
    "prodigy": OptimizerKind("prodigyopt", "prodigyopt", _prodigy,
                             lr=lambda adamw: (1.0, "Prodigy finds its own step size: lr 1 is its scale")),
    "adafactor": OptimizerKind("transformers.optimization", "transformers", _adafactor),
    "adamw-schedulefree": OptimizerKind("schedulefree", "schedulefree", _schedulefree, schedules_itself=True,
                                        evaluation_weights=True),
    "lion": OptimizerKind("lion_pytorch", "lion-pytorch", _lion,
                          lr=lambda adamw: (adamw / 5, "Lion's sign updates are larger: the Lion paper's "
                                                       "3-10x smaller rate than AdamW's")),
}


def kind_of(name: str) -> OptimizerKind:
    return OPTIMIZERS[name]


def make_optimizer(cfg, groups: list[dict], device: "torch.device") -> "torch.optim.Optimizer":
    """``cfg.optimizer`` over ``groups``; one line names the package to install when it is missing."""
    kind = OPTIMIZERS[cfg.optimizer]
    try:
        module = importlib.import_module(kind.module)
    except ImportError:
        raise UserError(f"optimizer {cfg.optimizer} needs the package {kind.package}: pip install {kind.package} "
                        "(or use --optimizer adamw)") from None
    optimizer = kind.build(module, groups, cfg, device)
    if kind.evaluation_weights:
        optimizer.train()
    return optimizer


@contextlib.contextmanager
def evaluation_weights(optimizer) -> Iterator[None]:
    """The parameters as they should be written or sampled: schedule-free AdamW trains at an interpolation and
    holds its average elsewhere (``eval()`` swaps it in); every other optimizer's are the weights themselves."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    swap = hasattr(inner, "eval") and callable(getattr(inner, "eval", None)) and "train_mode" in inner.param_groups[0]
    if not swap:
        yield
        return
    inner.eval()
    try:
        yield
    finally:
        inner.train()
