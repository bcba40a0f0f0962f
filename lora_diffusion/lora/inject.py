"""Walk a network, wrap target modules in LoRA layers, and act on all of them at once."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..errors import UserError
from .config import LoraConfig
from .layers import LoraLayer, wrap_module
from .targets import resolve_patterns

_WRAPPABLE = (nn.Linear, nn.Conv2d)


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Every LoRA layer in ``model`` by its module path (the path of the module it wraps)."""
    return {path: m for path, m in model.named_modules() if isinstance(m, LoraLayer)}


def base_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, module) for every Linear/Conv2d as the unwrapped model would name it.

    A module already wrapped is reported under its own path, not ``….base_layer``,
    and nothing inside a LoRA layer (A, B, dropout) is reported.
    """
    inside: list[str] = []
    for path, module in model.named_modules():
        if any(path.startswith(p + ".") for p in inside):
            continue
        if isinstance(module, LoraLayer):
            inside.append(path)
            yield path, module.base_layer
        elif isinstance(module, _WRAPPABLE):
            yield path, module


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted ``path`` inside ``model``."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def inject_adapter(
    model: nn.Module,
    name: str,
    config: LoraConfig,
    targets: str | Sequence[str] = "attn",
    *,
    kind: str = "unet",
    dtype: torch.dtype | None = None,
    presets: Mapping[str, Sequence[str]] | None = None,
    module_config: Callable[[str], LoraConfig | None] | None = None,
) -> list[str]:
    """Add a fresh adapter ``name`` to every module of ``model`` that ``targets`` select.

    targets: a preset name ("attn", "attn-ff", "full"; text encoder: "attn",
    "attn-mlp") or glob patterns over module paths (``*attn2.to_k``). Each pattern
    must match at least one Linear/Conv2d, else ``UserError`` names it. The whole
    model is frozen; only the new A/B (and bias deltas, per ``config.bias``) train.
    ``presets`` are the base family's preset patterns (``Family.target_presets``; default: the SD UNet's).
    ``module_config(path)`` gives a selected module its own config (block-wise ranks, ``lora/blocks.py``) or None
    to leave it out. Returns the wrapped module paths.
    """
    patterns = resolve_patterns(targets, kind, presets)
    modules = list(base_modules(model))
    hits = {p: [path for path, _ in modules if fnmatchcase(path, p)] for p in patterns}
    for pattern, found in hits.items():
        if not found:
            raise UserError(
                f"target pattern {pattern!r} matches no Linear/Conv2d module in the {kind}; "
                f"check the module names (e.g. {modules[0][0] if modules else 'none'}) or use a preset"
            )
    selected = {path for found in hits.values() for path in found}
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped: list[str] = []
    for path, module in modules:
        own = (module_config(path) if module_config else config) if path in selected else None
        if own is not None:
            layer = wrap_module(model.get_submodule(path))
            layer.add_adapter(name, own, dtype=dtype)
        elif config.bias == "all" and getattr(module, "bias", None) is not None:
            layer = wrap_module(model.get_submodule(path))
            layer.add_adapter(name, config, rank=0, with_bias_delta=True, dtype=dtype)
        else:
            continue
        if layer is not model.get_submodule(path):
            replace_module(model, path, layer)
        wrapped.append(path)
    return wrapped


def adapter_names(model: nn.Module) -> list[str]:
    """Names of all adapters present anywhere in ``model``, in first-seen order."""
    names: dict[str, None] = {}
    for layer in lora_layers(model).values():
        names.update(dict.fromkeys(layer.adapter_names))
    return list(names)


def _layers_with(model: nn.Module, name: str) -> list[LoraLayer]:
    layers = [layer for layer in lora_layers(model).values() if name in layer.rank]
    if not layers:
        known = ", ".join(adapter_names(model)) or "none"
        raise KeyError(f"no adapter named {name!r} in this model (loaded: {known})")
    return layers


def set_adapter_weight(model: nn.Module, name: str, weight: float) -> None:
    """Set the runtime weight w of adapter ``name`` everywhere (takes effect at once)."""
    for layer in _layers_with(model, name):
        layer.set_weight(name, weight)
    remerge(model)


def set_adapter_enabled(model: nn.Module, name: str, enabled: bool) -> None:
    for layer in _layers_with(model, name):
        layer.set_enabled(name, enabled)
    remerge(model)


def remerge(model: nn.Module) -> None:
    """Re-blend every merged layer from its pristine W0 (a merged model stays merged, at base speed)."""
    for layer in lora_layers(model).values():
        if layer.merged:
            layer.merge()


def merge_adapters(model: nn.Module) -> None:
    """Bake all adapters at their current weights into the base weights (inference speed).

    Always a fresh blend from the pristine W0, so it is right even after A/B were trained further.
    """
    for layer in lora_layers(model).values():
        layer.merge(fresh=True)


def blend_adapters(model: nn.Module, weights: dict[str, float], *, exact: bool = False) -> None:
    """Set runtime weights (adapters not named keep theirs) and bake the blend in: the fast path
    for moving sliders, one walk over the model and only the changed adapters' low-rank updates.
    ``exact=True`` re-blends changed layers from W0 instead, so the result depends on ``weights`` only."""
    for layer in lora_layers(model).values():
        for name, weight in weights.items():
            if name in layer.rank:
                layer.set_weight(name, weight)
        layer.merge(exact=exact)


@contextmanager
def bare_while_merged(model: nn.Module) -> Iterator[int]:
    """Within the block, every LoRA layer with nothing left to add (all adapters merged, or all at
    weight 0) is replaced by its base module, which holds the blended weight: the network runs
    exactly as a plain model would, without one wrapper call per layer (about 10% of an SDXL
    step at 1024 px). Yields how many layers were taken out; all are put back afterwards.
    """
    bare: list[tuple[str, LoraLayer]] = []
    for path, layer in lora_layers(model).items():
        if not layer.side_paths():  # the base module's own forward is then the layer's output, exactly
            bare.append((path, layer))
    for path, layer in bare:
        replace_module(model, path, layer.base_layer)
    try:
        yield len(bare)
    finally:
        for path, layer in bare:
            replace_module(model, path, layer)


def unmerge_adapters(model: nn.Module) -> None:
    """Restore the pristine base weights; adapters keep working on the side path."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``; layers left with no adapter return to the plain base module."""
    for layer in _layers_with(model, name):
        layer.delete_adapter(name)
    for path, layer in lora_layers(model).items():
        if not layer.rank:
            replace_module(model, path, layer.base_layer)


def bake_lora(model: nn.Module) -> None:
    """Merge every adapter at its current weight for good: the LoRA layers go, the plain modules
    stay with the blended weights (what ``bake`` saves). The pristine copies are dropped."""
    for path, layer in lora_layers(model).items():
        replace_module(model, path, layer.bake())


def remove_lora(model: nn.Module) -> None:
    """Take every LoRA layer out, putting back the original modules with their exact weights."""
    for path, layer in lora_layers(model).items():
        layer.unmerge()
        replace_module(model, path, layer.base_layer)


@dataclass(frozen=True)
class ParameterReport:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"trainable params: {self.trainable:,d} || all params: {self.total:,d} "
            f"|| trainable%: {self.percent:.4f}"
        )


def parameter_report(*models: nn.Module) -> ParameterReport:
    """Trainable and total parameter counts over ``models`` (like PEFT's print_trainable_parameters)."""
    seen: set[int] = set()
    trainable = total = 0
    for model in models:
        for p in model.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            if p.requires_grad:
                trainable += p.numel()
    return ParameterReport(trainable, total)


def lora_parameters(model: nn.Module, name: str | None = None) -> list[nn.Parameter]:
    """The trainable tensors of one adapter (or all adapters): A and B, LoHa/LoKr factors,
    DoRA magnitudes and bias deltas."""
    params: list[nn.Parameter] = []
    for layer in lora_layers(model).values():
        for store in (layer.lora_A, layer.lora_B, layer.lora_dense):
            for adapter, module in store.items():
                if name is None or adapter == name:
                    params.extend(module.parameters())
        for store in (layer.lora_magnitude, layer.lora_bias):
            for adapter, p in store.items():
                if name is None or adapter == name:
                    params.append(p)
    return params
