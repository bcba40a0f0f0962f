"""LoRA arithmetic on files: merge (exact or by SVD), resize (lower rank), extract (from two models).

All work on ``AdapterFile`` (kohya-keyed modules) in fp32. Low-rank SVDs go through the factors
(QR of B and Aᵀ, then an SVD of the small core), so merging and resizing plain LoRAs never build a
full-size matrix. LoHa, LoKr, Tucker and full-diff modules are additive too but not low-rank:
they are merged exactly as a full diff (LyCORIS ``diff``) and resized by an SVD of their ΔW.
DoRA modules are not additive (their weight depends on the base), so merge and resize refuse them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserError
from .file import META_PREFIX, AdapterFile
from .modules import ModuleDelta, ModuleLora, ModuleLycoris


@dataclass
class ModuleError:
    """How much of one module's change a low-rank result dropped: ‖Δ − Δ'‖_F / ‖Δ‖_F."""

    name: str
    rank: int
    relative_error: float


@dataclass
class Report:
    """Per-module errors and the overall one (the dropped share of Σ‖Δ‖²_F over all modules)."""

    modules: list[ModuleError]
    overall: float

    def worst(self) -> ModuleError | None:
        return max(self.modules, key=lambda m: m.relative_error, default=None)

    def summary(self) -> str:
        worst = self.worst()
        text = f"relative error {self.overall:.3e} overall (Frobenius, all modules)"
        if worst is not None:
            text += f"; worst module {worst.name}: {worst.relative_error:.3e} at rank {worst.rank}"
        return text


def _factors(module: ModuleLora, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) in fp32 with the scale and ``weight`` folded into up: Δ = up @ down."""
    up = module.up.float().flatten(1) * (module.scale * weight)
    return up, module.down.float().flatten(1)


def _svd_of_product(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of up @ down (out × K)(K × in) without forming it: U, S, Vh with K columns at most."""
    q1, r1 = torch.linalg.qr(up.double())
    q2, r2 = torch.linalg.qr(down.double().t())
    u, s, vh = torch.linalg.svd(r1 @ r2.t())
    return (q1 @ u), s, (vh @ q2.t())


def _truncate(u, s, vh, rank: int, like: ModuleLora) -> ModuleLora:
    """A rank-``rank`` ModuleLora from an SVD, √S on each side (balanced factors suit fp16 files)."""
    root = s[:rank].sqrt()
    up = (u[:, :rank] * root).float()
    down = (root[:, None] * vh[:rank]).float()
    down_shape = (rank, *like.down.shape[1:])
    up_shape = (up.shape[0], rank, *([1, 1] if like.down.dim() == 4 else []))
    return ModuleLora(down=down.reshape(down_shape), up=up.reshape(up_shape), alpha=float(rank))


def _energy_error(s: torch.Tensor, rank: int) -> tuple[float, float]:
    """(dropped ‖·‖², total ‖·‖²) for keeping the first ``rank`` singular values."""
    squares = s.double() ** 2
    return float(squares[rank:].sum()), float(squares.sum())


def _check_compatible(name: str, modules: list[ModuleDelta]) -> None:
    shapes = {(tuple(m.up.shape[:1]), tuple(m.down.shape[1:])) for m in modules if m.is_low_rank}
    if len(shapes) > 1:
        raise UserError(f"module {name} has different shapes in the inputs; these LoRAs are for different base models")


def refuse_dora(adapter: AdapterFile, command: str, source: str) -> None:
    """One line for a DoRA input to an additive tool (merge, resize)."""
    for name in sorted(adapter.modules):
        if adapter.modules[name].dora_scale is not None:
            raise UserError(
                f"{command}: {source} is a DoRA adapter (module {name} has a dora_scale): its weight change depends on "
                "the base and does not add up, so it cannot be merged or resized as a file; blend it at generation "
                "time (--lora) or merge it into a base with `lora-diffusion bake`"
            )


def _dense_shape(modules: list[ModuleDelta], deltas: list[torch.Tensor]) -> tuple[int, ...] | None:
    """The conv-kernel shape (out, in, kh, kw) if any input knows it, else None (ΔW stays 2-D)."""
    for m, delta in zip(modules, deltas):
        if isinstance(m, ModuleLora) and m.down is not None and m.down.dim() == 4:
            return (m.up.shape[0], *m.down.shape[1:])
        if delta.dim() == 4:
            return tuple(delta.shape)
    return None


def _merge_dense(name: str, present: list[tuple[ModuleDelta, float]]) -> ModuleLycoris:
    """Σ wᵢ·ΔWᵢ as a LyCORIS full diff: exact for any mix of types."""
    deltas = [module.checked_delta(name, "merge") for module, _ in present]
    flat = [delta.reshape(delta.shape[0], -1) * weight for delta, (_, weight) in zip(deltas, present)]
    if len({f.shape for f in flat}) > 1:
        raise UserError(f"module {name} has different shapes in the inputs; these LoRAs are for different base models")
    total = sum(flat[1:], flat[0])
    shape = _dense_shape([m for m, _ in present], deltas)
    return ModuleLycoris(network_kind="full", factors={"diff": total.reshape(shape) if shape else total})


def merge_adapters_exact(inputs: list[tuple[AdapterFile, float]]) -> AdapterFile:
    """One adapter equal to blending the inputs at their weights: ranks concatenated, no loss."""
    for index, (adapter, _) in enumerate(inputs):
        refuse_dora(adapter, "merge", f"input {index + 1}")
    names = sorted({n for adapter, _ in inputs for n in adapter.modules})
    merged: dict[str, ModuleDelta] = {}
    for name in names:
        present = [(a.modules[name], w) for a, w in inputs if name in a.modules]
        _check_compatible(name, [m for m, _ in present])
        with_weight = [(m, w) for m, w in present if m.has_weight and w != 0.0]
        with_rank = [(m, w) for m, w in with_weight if m.is_low_rank]
        entry: ModuleDelta = ModuleLora()
        if len(with_rank) < len(with_weight):
            entry = _merge_dense(name, with_weight)
        elif with_rank:
            like = with_rank[0][0]
            ups, downs = zip(*(_factors(m, w) for m, w in with_rank))
            up, down = torch.cat(ups, dim=1), torch.cat(downs)
            rank = down.shape[0]
            entry.down = down.reshape(rank, *like.down.shape[1:])
            entry.up = up.reshape(up.shape[0], rank, *([1, 1] if like.down.dim() == 4 else []))
            entry.alpha = float(rank)  # the scales are folded into up
        biases = [m.diff_b.float() * w for m, w in present if m.diff_b is not None]
        if biases:
            entry.diff_b = sum(biases)
        if entry.has_weight or entry.diff_b is not None:
            merged[name] = entry
    return AdapterFile(merged, _merged_metadata(inputs, None))


def merge_adapters_svd(inputs: list[tuple[AdapterFile, float]], rank: int) -> tuple[AdapterFile, Report]:
    """The blend of the inputs, truncated to ``rank`` per module by SVD; exact when the ranks sum ≤ ``rank``."""
    if rank < 1:
        raise UserError(f"--rank must be at least 1, got {rank}")
    exact = merge_adapters_exact(inputs)
    result, report = _resize_modules(exact, lambda s: min(rank, len(s)))
    result.metadata = _merged_metadata(inputs, rank)
    return result, report


def resize_adapter(adapter: AdapterFile, rank: int | None = None, keep_energy: float | None = None) -> tuple[AdapterFile, Report]:
    """Lower the rank by SVD: a fixed ``rank``, or per module the smallest rank keeping
    ``keep_energy`` (0–1) of Σσ² (kohya's dynamic "sv_fro" method)."""
    if (rank is None) == (keep_energy is None):
        raise UserError("resize: give either --rank R or --keep-energy F")
    if rank is not None and rank < 1:
        raise UserError(f"--rank must be at least 1, got {rank}")
    if keep_energy is not None and not 0 < keep_energy <= 1:
        raise UserError(f"--keep-energy must be in (0, 1], got {keep_energy}")

    refuse_dora(adapter, "resize", "the input")

    def choose(s: torch.Tensor) -> int:
        if rank is not None:
            return min(rank, len(s))
        squares = s.double() ** 2
        kept = torch.cumsum(squares, 0) / squares.sum().clamp_min(1e-300)
        return int(torch.searchsorted(kept, torch.tensor(keep_energy, dtype=kept.dtype) - 1e-12).item()) + 1

    result, report = _resize_modules(adapter, choose)
    result.metadata = dict(adapter.metadata)
    result.metadata[META_PREFIX + "resized"] = f"rank {rank}" if rank is not None else f"keep energy {keep_energy}"
    result.metadata[META_PREFIX + "rank"] = str(result.rank)
    result.metadata["ss_network_dim"] = str(result.rank)
    result.metadata["ss_network_alpha"] = str(result.rank)
    if adapter.networks != ["lora"] or getattr(adapter, "dora", False):
        # the result is a plain LoRA whatever the input's type was
        result.metadata["ss_network_module"] = "networks.lora"
        for key in ("ss_network_args", META_PREFIX + "network", META_PREFIX + "dora"):
            result.metadata.pop(key, None)
    return result, report


def _resize_modules(adapter: AdapterFile, choose) -> tuple[AdapterFile, Report]:
    modules: dict[str, ModuleDelta] = {}
    errors: list[ModuleError] = []
    dropped_total = energy_total = 0.0
    for name in sorted(adapter.modules):
        module = adapter.modules[name]
        if not module.has_weight:
            modules[name] = module
            continue
        if module.is_low_rank:
            u, s, vh = _svd_of_product(*_factors(module, 1.0))
        else:
            delta = module.checked_delta(name, "resize")
            shape = _dense_shape([module], [delta]) or tuple(delta.shape)
            u, s, vh = torch.linalg.svd(delta.reshape(delta.shape[0], -1).double(), full_matrices=False)
            module = ModuleLora(down=torch.empty(1, *shape[1:]), up=torch.empty(shape[0], 1), diff_b=module.diff_b)
        keep = max(1, choose(s))
        dropped, total = _energy_error(s, keep)
        dropped_total, energy_total = dropped_total + dropped, energy_total + total
        entry = _truncate(u, s, vh, keep, module)
        entry.diff_b = module.diff_b
        modules[name] = entry
        errors.append(ModuleError(name, keep, math.sqrt(dropped / total) if total > 0 else 0.0))
    overall = math.sqrt(dropped_total / energy_total) if energy_total > 0 else 0.0
    return AdapterFile(modules, dict(adapter.metadata)), Report(errors, overall)


def _merged_metadata(inputs: list[tuple[AdapterFile, float]], rank: int | None) -> dict[str, str]:
    from .. import __version__

    archs = {a.architecture() for a, _ in inputs}
    meta = {
        META_PREFIX + "version": __version__,
        META_PREFIX + "merged_from": str(len(inputs)),
        META_PREFIX + "merge_weights": ",".join(f"{w:g}" for _, w in inputs),
        META_PREFIX + "merge": "exact" if rank is None else f"svd rank {rank}",
    }
    if len(archs) == 1:
        meta[META_PREFIX + "base"] = archs.pop()
    return meta


def extract_difference(base: dict, tuned: dict, rank: int, *, targets: dict[str, list[str]] | None = None,
                       min_change: float = 1e-7) -> tuple[AdapterFile, Report]:
    """A rank-``rank`` LoRA approximating tuned − base, module by module (SVD of each difference).

    ``base``/``tuned`` are components dicts (``{"unet": …, "te": …}``) of the same architecture;
    ``targets`` maps "unet"/"text" to a preset or globs (default: every Linear/Conv of the UNet,
    attention and MLP of the text encoders).
    Modules whose weights are unchanged (relative change below ``min_change``) are left out.
    """
    from ..lora.inject import base_modules
    from ..lora.targets import matches, resolve_patterns
    from .naming import kohya_name

    if rank < 1:
        raise UserError(f"--rank must be at least 1, got {rank}")
    modules: dict[str, ModuleLora] = {}
    errors: list[ModuleError] = []
    dropped_total = energy_total = 0.0
    for component, base_model in base.items():
        if component not in tuned:
            raise UserError(f"the tuned model has no {component}; extract needs two models of the same architecture")
        kind = "unet" if component == "unet" else "text"
        patterns = resolve_patterns((targets or {}).get(kind, "full" if kind == "unet" else "attn-mlp"), kind)
        tuned_modules = dict(base_modules(tuned[component]))
        for path, module in base_modules(base_model):
            if not matches(path, patterns):
                continue
            other = tuned_modules.get(path)
            if other is None or other.weight.shape != module.weight.shape:
                raise UserError(f"module {path} of {component} differs in shape between the models; "
                                "extract needs the same architecture")
            w0 = module.weight.detach().float()
            diff = (other.weight.detach().float() - w0).flatten(1)
            norm = float(diff.norm())
            if norm <= min_change * max(float(w0.norm()), 1e-12):
                continue
            u, s, vh = torch.linalg.svd(diff.double(), full_matrices=False)
            keep = min(rank, len(s))
            like = ModuleLora(down=torch.empty(keep, *w0.shape[1:]), up=torch.empty(w0.shape[0], keep))
            entry = _truncate(u, s, vh, keep, like)
            name = kohya_name(component, path)
            modules[name] = entry
            dropped, total = _energy_error(s, keep)
            dropped_total, energy_total = dropped_total + dropped, energy_total + total
            errors.append(ModuleError(name, keep, math.sqrt(dropped / total) if total > 0 else 0.0))
    if not modules:
        raise UserError("the two models have the same weights in every targeted module; nothing to extract")
    overall = math.sqrt(dropped_total / energy_total) if energy_total > 0 else 0.0
    return AdapterFile(modules), Report(errors, overall)
