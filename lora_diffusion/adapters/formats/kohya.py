"""The kohya/A1111 layout: ``<module>.<suffix>`` with modules named ``lora_unet_…``/``lora_te…_``.

This is the naming A1111, ComfyUI, kohya's scripts and LyCORIS all read and write. A module's
suffixes say its network type; each type's tensors are read by a *codec* (this file: plain
LoRA/LoCon; ``lycoris.py``: LoHa, LoKr, full diffs), registered in ``formats/__init__.py``.
Common to every type: ``alpha`` (scalar), ``diff_b`` (bias delta) and ``dora_scale`` (DoRA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ...errors import UserError
from ..modules import ModuleDelta, ModuleLora
from ..naming import canonical_kohya_name, component_of

COMMON = ("alpha", "diff_b", "dora_scale")


@dataclass(frozen=True)
class Codec:
    """How one network type is stored: which suffixes mark it, which it may hold, how to read/write."""

    kind: str
    markers: tuple[str, ...]
    suffixes: tuple[str, ...]
    read: Callable[[str, dict[str, torch.Tensor], object], ModuleDelta]
    write: Callable[[ModuleDelta], dict[str, torch.Tensor]]


def read_common(module: ModuleDelta, parts: dict[str, torch.Tensor]) -> ModuleDelta:
    """Fill alpha, diff_b and dora_scale from a module's tensors."""
    for part in COMMON:
        if part in parts:
            module.set_part(part, parts[part])
    return module


def write_common(module: ModuleDelta, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """alpha as an fp32 scalar (so non-integer alphas stay exact), diff_b, and dora_scale in fp32
    (a magnitude is a norm: fp16 would round it for no saving worth having)."""
    tensors: dict[str, torch.Tensor] = {}
    if module.has_weight and (module.rank or module.alpha is not None):
        tensors["alpha"] = torch.tensor(float(module.rank if module.alpha is None else module.alpha))
    if module.diff_b is not None:
        tensors["diff_b"] = module.diff_b.detach().to("cpu", dtype).contiguous()
    if module.dora_scale is not None:
        tensors["dora_scale"] = module.dora_scale.detach().to("cpu", torch.float32).contiguous()
    return tensors


def _read_lora(name: str, parts: dict[str, torch.Tensor], source: object) -> ModuleLora:
    module = read_common(ModuleLora(), parts)
    module.down, module.up, module.mid = parts.get("lora_down.weight"), parts.get("lora_up.weight"), parts.get("lora_mid.weight")
    if (module.down is None) != (module.up is None):
        raise UserError(f"{source}: module {name} has only one of lora_down/lora_up; the file is incomplete")
    if module.down is not None:
        inner_up = module.up.shape[1]
        if module.mid is not None:
            if tuple(module.mid.shape[:2]) != (module.down.shape[0], inner_up):
                raise UserError(f"{source}: module {name}: lora_mid {tuple(module.mid.shape)} does not fit lora_down "
                                f"{tuple(module.down.shape)} and lora_up {tuple(module.up.shape)}; the file is corrupt")
        elif inner_up != module.down.shape[0]:
            raise UserError(
                f"{source}: module {name} has lora_up {tuple(module.up.shape)} and lora_down "
                f"{tuple(module.down.shape)} of different ranks; the file is corrupt"
            )
    elif module.diff_b is None:
        raise UserError(f"{source}: module {name} has only an alpha and no weights; the file is incomplete")
    if module.dora_scale is not None and module.down is None:
        raise UserError(f"{source}: module {name} has a dora_scale but no lora_down/lora_up; the file is incomplete")
    return module


def _write_lora(module: ModuleLora, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for suffix, tensor in (("lora_down.weight", module.down), ("lora_up.weight", module.up), ("lora_mid.weight", module.mid)):
        if tensor is not None:
            tensors[suffix] = tensor.detach().to("cpu", dtype).contiguous()
    return tensors


LORA = Codec("lora", ("lora_down.weight", "lora_up.weight"), ("lora_down.weight", "lora_up.weight", "lora_mid.weight"),
             _read_lora, _write_lora)


def parse_state_dict(tensors: dict[str, torch.Tensor], codecs: list[Codec], source: object = "state dict") -> dict[str, ModuleDelta]:
    """Group ``<module>.<suffix>`` tensors by module and read each with the codec its suffixes name."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module_name, _, suffix = key.partition(".")
        module_name = canonical_kohya_name(module_name)
        if component_of(module_name) is None:
            raise UserError(
                f"{source}: tensor {key!r} is not in the kohya/A1111 LoRA layout "
                "(expected names starting lora_unet_ or lora_te_)"
            )
        grouped.setdefault(module_name, {})[suffix] = tensor
    modules: dict[str, ModuleDelta] = {}
    for name, parts in grouped.items():
        codec = _codec_for(name, parts, codecs, source)
        unknown = sorted(set(parts) - set(codec.suffixes) - set(COMMON))
        if unknown:
            raise UserError(f"{source}: module {name}: tensor {name}.{unknown[0]} is not a {codec.kind} tensor "
                            f"(a {codec.kind} module holds {', '.join(codec.suffixes + COMMON)}); the file is corrupt "
                            "or of a type this tool does not read")
        modules[name] = codec.read(name, parts, source)
    return modules


def _codec_for(name: str, parts: dict[str, torch.Tensor], codecs: list[Codec], source: object) -> Codec:
    found = [c for c in codecs if any(m in parts for m in c.markers)]
    kinds = {c.kind for c in found}
    if len(kinds) > 1:
        raise UserError(f"{source}: module {name} mixes tensors of {' and '.join(sorted(kinds))}; the file is corrupt")
    if found:
        return found[0]
    if "diff_b" in parts and set(parts) <= set(COMMON):
        return LORA  # a bias delta alone (bias="all" training) is a weightless LoRA
    suffix = next((p for p in sorted(parts) if p not in COMMON), None)
    if suffix is None:
        raise UserError(f"{source}: module {name} has only {', '.join(sorted(parts))} and no weights; the file is incomplete")
    readable = sorted({m for c in codecs for m in c.markers})
    raise UserError(f"{source}: unknown tensor {name}.{suffix} (LoRA, LoHa, LoKr and full-diff modules are read here, "
                    f"marked by {', '.join(readable)}); the file is of a type this tool does not read")


def to_state_dict(modules: dict[str, ModuleDelta], codecs: dict[str, Codec], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """kohya-layout tensors for ``modules``, each written by the codec of its kind."""
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(modules):
        module = modules[name]
        parts = codecs[module.kind].write(module, dtype) if module.has_weight else {}
        parts.update(write_common(module, dtype))
        tensors.update({f"{name}.{suffix}": t for suffix, t in parts.items()})
    return tensors
