"""LyCORIS network types in the kohya layout: LoHa (``hada_*``), LoKr (``lokr_*``), full (``diff``).

The tensor names and shapes LyCORIS writes and A1111/ComfyUI read; ΔW of each type is defined in
``lora/deltas.py``. Only the shapes that belong together are checked here; whether ΔW fits the
base layer is checked when the file is applied.
"""

from __future__ import annotations

import torch

from ...errors import UserError
from ..modules import ModuleLycoris
from .kohya import Codec, read_common

LOHA_FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_FACTORS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def _incomplete(source: object, name: str, missing: str, kind: str) -> UserError:
    return UserError(f"{source}: module {name} is a {kind} module without {missing}; the file is incomplete")


def _rank_mismatch(source, name, key_a, a, key_b, b) -> UserError:
    return UserError(f"{source}: module {name}: {key_a} {tuple(a.shape)} and {key_b} {tuple(b.shape)} have different "
                     "ranks; the file is corrupt")


def _read_loha(name: str, parts: dict[str, torch.Tensor], source: object) -> ModuleLycoris:
    for key in LOHA_FACTORS[:4]:
        if key not in parts:
            raise _incomplete(source, name, key, "LoHa")
    if ("hada_t1" in parts) != ("hada_t2" in parts):
        raise _incomplete(source, name, "hada_t2" if "hada_t1" in parts else "hada_t1", "Tucker LoHa")
    tucker = "hada_t1" in parts
    for i in ("1", "2"):
        a, b = parts[f"hada_w{i}_a"], parts[f"hada_w{i}_b"]
        # plain: a (out, r) @ b (r, in); Tucker: a (r, out), b (r, in) around the core t (r, r, k, k)
        rank_a = a.shape[0] if tucker else a.shape[1]
        if rank_a != b.shape[0]:
            raise _rank_mismatch(source, name, f"hada_w{i}_a", a, f"hada_w{i}_b", b)
    if parts["hada_w1_b"].shape[0] != parts["hada_w2_b"].shape[0] and not tucker:
        raise _rank_mismatch(source, name, "hada_w1_b", parts["hada_w1_b"], "hada_w2_b", parts["hada_w2_b"])
    factors = {k: parts[k] for k in LOHA_FACTORS if k in parts}
    return read_common(ModuleLycoris(network_kind="loha", factors=factors), parts)


def _read_lokr(name: str, parts: dict[str, torch.Tensor], source: object) -> ModuleLycoris:
    for half in ("1", "2"):
        full, a, b = f"lokr_w{half}", f"lokr_w{half}_a", f"lokr_w{half}_b"
        if full in parts:
            continue
        if a not in parts or b not in parts:
            raise _incomplete(source, name, f"{full} or both {a} and {b}", "LoKr")
        if "lokr_t2" in parts and half == "2":
            if parts[a].shape[0] != parts["lokr_t2"].shape[0] or parts[b].shape[0] != parts["lokr_t2"].shape[1]:
                raise _rank_mismatch(source, name, a, parts[a], "lokr_t2", parts["lokr_t2"])
        elif parts[a].shape[1] != parts[b].shape[0]:
            raise _rank_mismatch(source, name, a, parts[a], b, parts[b])
    factors = {k: parts[k] for k in LOKR_FACTORS if k in parts}
    return read_common(ModuleLycoris(network_kind="lokr", factors=factors), parts)


def _read_full(name: str, parts: dict[str, torch.Tensor], source: object) -> ModuleLycoris:
    return read_common(ModuleLycoris(network_kind="full", factors={"diff": parts["diff"]}), parts)


def _write(module: ModuleLycoris, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in module.factors.items()}


LOHA = Codec("loha", ("hada_w1_a", "hada_w1_b"), LOHA_FACTORS, _read_loha, _write)
LOKR = Codec("lokr", ("lokr_w1", "lokr_w1_a", "lokr_w2", "lokr_w2_a"), LOKR_FACTORS, _read_lokr, _write)
FULL = Codec("full", ("diff",), ("diff",), _read_full, _write)
