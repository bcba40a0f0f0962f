"""Between adapter files and networks: take an adapter out of a model, put a file into one.

A *components* dict names the networks of one pipeline by their kohya role:
``{"unet": unet, "te": text_encoder}`` or, for SDXL, ``{"unet", "te1", "te2"}``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .. import __version__
from ..errors import UserError
from ..lora.config import LoraConfig
from ..lora.inject import base_modules, lora_layers, remerge, replace_module
from ..lora.layers import LoraLayer, wrap_module
from ..lora.networks import DenseNetwork, LoconTuckerNetwork
from ..models.original_layout import unet_module_to_original
from ..families import family_of, get
from ..models.architecture import fingerprint
from .file import META_PREFIX, AdapterFile, read_adapter, write_adapter
from .modules import ModuleDelta, ModuleLora, ModuleLycoris, dora_axis_or_error
from .naming import PREFIXES, component_of, kohya_name

Components = Mapping[str, nn.Module]


def pipeline_components(pipe) -> dict[str, nn.Module]:
    """The LoRA-able networks of a diffusers pipeline, keyed by kohya role: ``unet`` for the family's denoiser (kohya
    names a transformer's modules ``lora_unet_`` too), then the family's text encoders the pipeline has."""
    family = family_of(pipe)
    components: dict[str, nn.Module] = {"unet": getattr(pipe, family.denoiser)}
    for role, attribute in family.text_encoders.items():
        if getattr(pipe, attribute, None) is not None:
            components[role] = getattr(pipe, attribute)
    return components


def components_architecture(components: Components) -> str:
    """The family name of a set of components (``family_of``'s one rule)."""
    return family_of(components).name


def _module_of(layer: LoraLayer, name: str) -> ModuleDelta:
    """One layer's adapter ``name`` as file data (tensors detached, not copied)."""
    rank = layer.rank[name]
    if name in layer.lora_dense:
        network = layer.lora_dense[name]
        if isinstance(network, LoconTuckerNetwork):
            entry: ModuleDelta = ModuleLora(down=network.down.detach(), mid=network.mid.detach(), up=network.up.detach())
        else:
            entry = ModuleLycoris(network_kind=network.kind, factors={k: v.detach() for k, v in network.factors().items()})
        entry.alpha = layer.alpha[name]
    elif rank:
        down, up = layer.factors(name)
        entry = ModuleLora(down=down, up=up, alpha=layer.alpha[name])
    else:
        entry = ModuleLora()
    if name in layer.lora_bias:
        entry.diff_b = layer.lora_bias[name].detach()
    if name in layer.lora_magnitude:
        entry.dora_scale = layer.lora_magnitude[name].detach()
    return entry


def _network_metadata(modules: dict[str, ModuleDelta]) -> dict[str, object]:
    """kohya's ``ss_network_module``/``ss_network_args`` as LyCORIS writes them for non-plain adapters."""
    kinds = {m.kind for m in modules.values() if m.has_weight}
    dora = any(m.dora_scale is not None for m in modules.values())
    tucker = any(getattr(m, "mid", None) is not None for m in modules.values())
    if kinds <= {"lora"} and not dora and not tucker:
        return {}
    algo = next(iter(kinds)) if len(kinds) == 1 else "mixed"
    args = {"algo": "locon" if algo == "lora" else algo}
    if dora:
        args["dora_wd"] = "True"
    return {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps(args),
            META_PREFIX + "network": args["algo"] if algo != "locon" else "lora", META_PREFIX + "dora": str(dora).lower()}


def extract_adapter(
    components: Components,
    name: str,
    *,
    base: str | None = None,
    metadata: Mapping[str, object] | None = None,
) -> AdapterFile:
    """The adapter ``name`` as an ``AdapterFile`` with kohya names and full metadata.

    base: architecture label to record (default: detected from the UNet).
    metadata: extra entries (training settings, dataset summary); values that are
    not strings are stored as JSON.
    """
    modules: dict[str, ModuleDelta] = {}
    fingerprint_weights: dict[str, torch.Tensor] = {}
    targets: dict[str, list[str]] = {}
    for component, model in components.items():
        suffixes: set[str] = set()
        for path, layer in lora_layers(model).items():
            if name not in layer.rank:
                continue
            key = kohya_name(component, path)
            entry = _module_of(layer, name)
            if entry.has_weight:
                parts = path.split(".")
                suffixes.add(".".join(parts[-3:] if parts[-1].isdigit() else parts[-2:]))
            modules[key] = entry
            fingerprint_weights[key] = layer.base_weight()
        if suffixes:
            targets[component] = sorted(suffixes)
    if not modules:
        raise UserError(f"no adapter named {name!r} in the model; nothing to save")
    adapter = AdapterFile(modules)
    arch = base or components_architecture(components)
    rank, alpha = adapter.rank, adapter.alpha
    convs = [m for m in modules.values() if isinstance(m, ModuleLora) and m.down is not None and m.down.dim() == 4
             and m.down.shape[-1] > 1]
    meta: dict[str, object] = {
        META_PREFIX + "version": __version__,
        META_PREFIX + "rank": rank,
        META_PREFIX + "alpha": _num(alpha),
        META_PREFIX + "targets": json.dumps(targets),
        META_PREFIX + "base": arch,
        META_PREFIX + "base_fingerprint": fingerprint(fingerprint_weights),
        "ss_network_module": "networks.lora",
        "ss_network_dim": rank,
        "ss_network_alpha": _num(alpha),
        "ss_base_model_version": get(arch).kohya_version,
        "ss_v2": str(get(arch).v2),
    }
    if convs:
        meta["ss_network_args"] = json.dumps({"conv_dim": str(convs[0].rank), "conv_alpha": str(_num(convs[0].alpha))})
    meta.update(_network_metadata(modules))
    for key, value in (metadata or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    adapter.metadata = {k: str(v) for k, v in meta.items()}
    return adapter


def _num(value: float | None) -> object:
    if value is None:
        return ""
    return int(value) if float(value).is_integer() else value


def save_adapter(
    path: str | os.PathLike,
    components: Components,
    name: str,
    *,
    dtype: str = "fp16",
    base: str | None = None,
    metadata: Mapping[str, object] | None = None,
    layout: str = "kohya",
) -> Path:
    """Write adapter ``name`` from ``components`` to a ``.safetensors`` file (kohya or diffusers layout)."""
    return write_adapter(extract_adapter(components, name, base=base, metadata=metadata), path, dtype, layout)


def _fit(tensor: torch.Tensor, like: tuple[int, ...]) -> torch.Tensor | None:
    """``tensor`` viewed in the shape the layer expects, or None if it cannot be.

    kohya stores 1×1 convs and linears interchangeably for SD1 ``proj_in``/``proj_out``
    (conv in SD1, linear in SD2), so (r, in) and (r, in, 1, 1) are the same thing.
    """
    if tuple(tensor.shape) == like:
        return tensor
    if tensor.numel() == torch.Size(like).numel() and tensor.shape[:2] == like[:2]:
        return tensor.reshape(like)
    return None


def _mismatch(source: str, name: str, detail: str, file_arch: str, model_arch: str) -> UserError:
    if file_arch != model_arch and "custom" not in (file_arch, model_arch):
        cause = f"this LoRA was made for {get(file_arch).label}; the loaded base is {get(model_arch).label}"
    else:
        cause = "this LoRA was made for a different base model; load it with the base it was trained on"
    return UserError(f"LoRA {source} does not fit the base model: module {name} {detail}; {cause}")


def _model_key(key: str, components: Components) -> str:
    """The kohya name in this model.

    Files disagree on how to name a lone text encoder: diffusers' own kohya converter
    writes ``lora_te1_`` for SD1/SD2 and diffusers-layout SDXL files name the first
    encoder like a lone one, so te and te1 stand in for each other when only one exists.
    """
    component = component_of(key)
    for wanted, other in (("te", "te1"), ("te1", "te")):
        if component == wanted and wanted not in components and other in components:
            return PREFIXES[other] + key[len(PREFIXES[wanted]):]
    return key


def apply_adapter(
    adapter: AdapterFile,
    components: Components,
    name: str,
    *,
    weight: float = 1.0,
    trainable: bool = False,
    source: str = "file",
) -> list[str]:
    """Add ``adapter`` to the networks under the adapter name ``name``.

    Every tensor is checked against the model before anything changes: a missing
    module or a wrong shape raises ``UserError`` naming the first offending module
    and the likely cause, and leaves the model untouched.
    """
    plan = _checked_plan(adapter, components, name, source)
    applied = _install(plan, name, weight)
    for model in components.values():
        if not trainable:
            for layer in lora_layers(model).values():
                layer.freeze(name)
        remerge(model)  # merged layers must be re-blended so the new adapter shows in their weights
    return applied


def _checked_plan(adapter: AdapterFile, components: Components, name: str, source: str) -> list[tuple]:
    """Every module of ``adapter`` matched to its base layer and checked (shapes, bias, DoRA axis, name clash):
    (model, path, key, entry, weights, DoRA axis) each. Raises before anything in the model changes."""
    model_arch = components_architecture(components)
    file_arch = adapter.architecture()
    lookup: dict[str, tuple[nn.Module, str, nn.Module]] = {}
    for component, model in components.items():
        for path, module in base_modules(model):
            lookup[kohya_name(component, path)] = (model, path, module)
            if component == "unet" and "layers_per_block" in getattr(model, "config", {}):
                # kohya's SDXL files name UNet modules the original way (input_blocks_4_1_…)
                original = unet_module_to_original(path, model.config)
                lookup.setdefault(kohya_name(component, original), (model, path, module))
    plan: list[tuple[nn.Module, str, str, ModuleDelta, object, str | None]] = []
    for file_key in sorted(adapter.modules):
        entry = adapter.modules[file_key]
        key = _model_key(file_key, components)
        if component_of(key) not in components:
            role = {"te": "a text encoder", "te1": "a first text encoder", "te2": "a second text encoder (SDXL)"}
            wanted = role.get(component_of(key), component_of(key))
            raise _mismatch(source, key, f"needs {wanted}, which the base does not have", file_arch, model_arch)
        if key not in lookup:
            raise _mismatch(source, key, "is not in the base model", file_arch, model_arch)
        model, path, module = lookup[key]
        weights: object = None  # (down, up) for a low-rank pair, a DenseNetwork for the other types
        base_w = module.weight
        if entry.has_weight and not isinstance(entry, ModuleLora) or getattr(entry, "mid", None) is not None:
            weights = _dense_network(entry, base_w, source, key, file_arch, model_arch)
        elif entry.has_weight:
            if isinstance(module, nn.Conv2d):
                down_like = (entry.rank, *base_w.shape[1:])
                up_like = (base_w.shape[0], entry.rank, 1, 1)
            else:
                down_like, up_like = (entry.rank, base_w.shape[1]), (base_w.shape[0], entry.rank)
            down, up = _fit(entry.down, down_like), _fit(entry.up, up_like)
            if down is None or up is None:
                detail = (
                    f"has lora_down {tuple(entry.down.shape)} / lora_up {tuple(entry.up.shape)} but the base layer "
                    f"is {tuple(base_w.shape)}"
                )
                raise _mismatch(source, key, detail, file_arch, model_arch)
            weights = (down, up)
        axis = None
        if entry.dora_scale is not None:
            axis = dora_axis_or_error(entry, tuple(base_w.shape), key, source)
        bias = getattr(module, "bias", None)
        if entry.diff_b is not None and (bias is None or tuple(entry.diff_b.shape) != tuple(bias.shape)):
            raise _mismatch(source, key, "has a bias delta that the base layer cannot take", file_arch, model_arch)
        existing = model.get_submodule(path)
        if isinstance(existing, LoraLayer) and name in existing.rank:
            raise UserError(f"an adapter named {name!r} is already loaded; choose another name or unload it first")
        plan.append((model, path, key, entry, weights, axis))

    return plan


def _install(plan: list[tuple], name: str, weight: float) -> list[str]:
    """Install a checked plan: each base layer wrapped (once) and given the adapter's factors at ``weight``."""
    applied: list[str] = []
    with torch.no_grad():
        for model, path, key, entry, weights, axis in plan:
            current = model.get_submodule(path)
            layer = wrap_module(current)
            base_w = layer.base_layer.weight
            if isinstance(weights, DenseNetwork):
                layer.add_dense(name, weights.to(device=base_w.device, dtype=base_w.dtype),
                                alpha=entry.alpha if entry.alpha is not None else float(entry.rank or 1),
                                with_bias_delta=entry.diff_b is not None)
            else:
                config = LoraConfig(rank=max(entry.rank, 1), alpha=(entry.alpha or entry.rank or 1.0))
                layer.add_adapter(name, config, rank=entry.rank, with_bias_delta=entry.diff_b is not None)
                if weights is not None:
                    layer.set_factors(name, *weights)
            if entry.diff_b is not None:
                layer.lora_bias[name].copy_(entry.diff_b)
            if axis is not None:
                # a magnitude is a norm: kept in fp32 whatever the base dtype
                layer.set_magnitude(name, entry.dora_scale.to(base_w.device, torch.float32), axis)
            layer.set_weight(name, weight)
            if layer is not current:
                replace_module(model, path, layer)
            applied.append(key)
    return applied


def _dense_network(entry: ModuleDelta, base_w: torch.Tensor, source: str, key: str, file_arch: str,
                   model_arch: str) -> DenseNetwork:
    """The network for a LoHa/LoKr/full/Tucker module, after checking the shape its ΔW would have (worked out
    from the factor shapes, nothing built) against the base layer."""
    shape = entry.checked_shape(key, source)
    if shape.numel() != base_w.numel() or shape[0] != base_w.shape[0]:
        detail = f"has a {entry.kind} weight change of shape {tuple(shape)} but the base layer is {tuple(base_w.shape)}"
        raise _mismatch(source, key, detail, file_arch, model_arch)
    return entry.network(tuple(base_w.shape))


def load_adapter(
    path: str | os.PathLike,
    components: Components,
    name: str | None = None,
    *,
    weight: float = 1.0,
    trainable: bool = False,
) -> str:
    """Read a LoRA file and add it to the networks; returns the adapter name used."""
    adapter = read_adapter(path)
    name = name or Path(path).stem.replace(".", "_")
    if hasattr(nn.ModuleDict(), name):
        name = f"{name}_lora"
    apply_adapter(adapter, components, name, weight=weight, trainable=trainable, source=f"file {path}")
    return name


def rank_summary(adapter: AdapterFile) -> dict[int, int]:
    """rank -> number of modules, for reports."""
    return dict(Counter(m.rank for m in adapter.modules.values()))
