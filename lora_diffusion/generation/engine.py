"""Generate with any mix of LoRAs: pipelines and adapters stay loaded, weights re-blend in place.

Changing weights or the active set never re-reads a file: each adapter file is read
once and kept as a side path in the layers; ``set_loras`` writes the new blend into
the base weights (merged from a pristine copy, so exact), so sampling costs what the
base model costs. All weights 0 gives back the base weights bit for bit.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import math
import random
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapters.apply import apply_adapter, pipeline_components
from ..adapters.file import read_adapter
from ..errors import UserError
from ..families import native_resolution
from ..lora.inject import adapter_names, bare_while_merged, blend_adapters, delete_adapter
from ..models.loading import load_pipeline
from .limits import MAX_IMAGES, MAX_SEED, MAX_SIDE, MAX_STEPS
from .params import GenerationParams
from .schedulers import make_scheduler


LORA_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")


def check_seed(seed: object, what: str = "--seed") -> int | None:
    """A seed as an int (None or a negative number: random), or one error line naming ``what``."""
    if seed is None:
        return None
    try:
        value = float(seed)
    except (TypeError, ValueError):
        raise UserError(f"{what} {seed!r} is not a number; give a whole number from 0 to {MAX_SEED}, or -1") from None
    if not math.isfinite(value) or value != int(value) or value > MAX_SEED:
        raise UserError(f"{what} {seed!r}: give a whole number from 0 to {MAX_SEED}, or -1 for a random seed")
    return None if value < 0 else int(value)


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA to blend: file, UNet weight, and text-encoder weight (None: same as ``weight``)."""

    path: str
    weight: float = 1.0
    text_weight: float | None = None

    @classmethod
    def parse(cls, spec: str) -> "LoraChoice":
        """``FILE[:WEIGHT[:TEXT_WEIGHT]]`` (numbers are taken from the right, so paths may hold ':')."""
        parts = spec.split(":")
        numbers: list[float] = []
        while len(parts) > 1 and len(numbers) < 2:
            try:
                numbers.insert(0, float(parts[-1]))
            except ValueError:
                break
            parts.pop()
        path = ":".join(parts)
        if not path:
            raise UserError(f"--lora {spec!r}: give a file, e.g. style.safetensors:0.8")
        head, _, tail = path.rpartition(":")
        if head and not Path(path).exists() and (Path(head).exists() or head.lower().endswith(LORA_SUFFIXES)):
            raise UserError(f"--lora {spec!r}: the weight {tail!r} is not a number; write FILE:WEIGHT, e.g. {head}:0.8")
        if not all(math.isfinite(n) for n in numbers):
            raise UserError(f"--lora {spec!r}: weights must be finite numbers (not nan or inf), e.g. {path}:0.8")
        weight = numbers[0] if numbers else 1.0
        text_weight = numbers[1] if len(numbers) > 1 else None
        return cls(path, weight, text_weight)


def file_key(path: str) -> str:
    """Where a file is and which version of it: its resolved path, size and modification time."""
    stat = Path(path).stat()
    return f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_key(base: str) -> str:
    """One key per base model, however it is spelled: ``builtin`` for the shipped base (by name or by its
    folder), the resolved path for a local folder or file, the id itself for a hub id."""
    if base == "builtin":
        return base
    path = Path(base).expanduser()
    if not path.exists():
        return base
    resolved = path.resolve()
    from ..models.builtin import builtin_path

    return "builtin" if resolved == builtin_path().resolve() else str(resolved)


@dataclass
class _Loaded:
    """An adapter held in a pipeline's layers: its layer name and the file it was last read from."""

    name: str
    path: str


class GenerationEngine:
    """Cached pipelines per base and cached adapters per file content; thread use is the caller's to serialise.

    Both caches are bounded: at most ``MAX_PIPELINES`` bases (least recently used dropped) and ``MAX_ADAPTERS``
    adapters per base; an adapter whose file is gone from the disk is dropped at the next request. Adapters are
    keyed by content (sha256), so a renamed or copied file is not loaded twice."""

    MAX_PIPELINES = 2
    MAX_ADAPTERS = 16
    _MAX_HASHES = 1024

    def __init__(self, device: str | None = None, dtype: torch.dtype = torch.float32, allow_pickle: bool = False):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        self.allow_pickle = allow_pickle
        self._pipes: OrderedDict[str, object] = OrderedDict()
        self._adapters: dict[str, OrderedDict[str, _Loaded]] = {}  # base key -> content hash -> loaded adapter
        self._hashes: OrderedDict[str, str] = OrderedDict()  # file_key -> sha256, so a file is hashed once

    def pipeline(self, base: str = "builtin"):
        key = base_key(base)
        if key not in self._pipes:
            while len(self._pipes) >= self.MAX_PIPELINES:
                dropped, _ = self._pipes.popitem(last=False)
                self._adapters.pop(dropped, None)
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            self._pipes[key] = load_pipeline(base, dtype=self.dtype, device=self.device, allow_pickle=self.allow_pickle)
            self._adapters[key] = OrderedDict()
        self._pipes.move_to_end(key)
        return self._pipes[key]

    def _content(self, path: str) -> str:
        key = file_key(path)
        if key not in self._hashes:
            self._hashes[key] = _sha256(path)
            while len(self._hashes) > self._MAX_HASHES:
                self._hashes.popitem(last=False)
        self._hashes.move_to_end(key)
        return self._hashes[key]

    def set_loras(self, base: str, choices: list[LoraChoice]) -> list[tuple[str, LoraChoice]]:
        """Make exactly ``choices`` active at their weights; returns (adapter name, choice) pairs.

        The blended weights depend on ``choices`` alone, never on earlier requests: changed layers are re-blended
        from the pristine base weights, so the same request with the same seed gives the same image bit for bit."""
        pipe = self.pipeline(base)
        components = pipeline_components(pipe)
        loaded = self._adapters[base_key(base)]
        merged: dict[str, LoraChoice] = {}  # content hash -> the choices of that file, weights added
        for choice in choices:
            if not Path(choice.path).is_file():
                raise UserError(f"LoRA file not found: {choice.path}; check the --lora path")
            content = self._content(choice.path)
            merged[content] = _added(merged[content], choice) if content in merged else choice
            if content not in loaded:
                name = f"lora_{content[:16]}"
                apply_adapter(read_adapter(choice.path), components, name, weight=0.0, source=f"file {choice.path}")
                loaded[content] = _Loaded(name, choice.path)
            loaded[content].path = choice.path
            loaded.move_to_end(content)
        active = [(loaded[content].name, choice) for content, choice in merged.items()]
        self._evict(components, loaded, {name for name, _ in active})
        chosen = {name: choice for name, choice in active}
        for role, model in components.items():
            weights = {}
            for entry in loaded.values():
                choice = chosen.get(entry.name)
                if choice is None:
                    weights[entry.name] = 0.0
                elif role == "unet" or choice.text_weight is None:
                    weights[entry.name] = choice.weight
                else:
                    weights[entry.name] = choice.text_weight
            blend_adapters(model, weights, exact=True)  # baked in: sampling runs at base-model speed
        return active

    def _evict(self, components: dict, loaded: OrderedDict[str, _Loaded], keep: set[str]) -> None:
        """Drop adapters whose file is gone, then the least recently used beyond ``MAX_ADAPTERS``."""
        gone = [c for c, e in loaded.items() if e.name not in keep and not Path(e.path).is_file()]
        spare = [c for c, e in loaded.items() if e.name not in keep and c not in gone]
        excess = max(0, len(loaded) - len(gone) - self.MAX_ADAPTERS)
        for content in gone + spare[:excess]:
            name = loaded.pop(content).name
            for model in components.values():
                if name in adapter_names(model):
                    delete_adapter(model, name)

    @torch.no_grad()
    def generate(self, prompt: str, *, base: str = "builtin", loras: list[LoraChoice] = (), negative_prompt: str = "",
                 seed: int | None = None, steps: int = 20, guidance: float = 5.0, width: int | None = None,
                 height: int | None = None, num_images: int = 1, scheduler: str = "DPM++ 2M"):
        """Images and their parameters; image i uses seed + i (as A1111 does for a batch)."""
        if not (1 <= steps <= MAX_STEPS and 1 <= num_images <= MAX_IMAGES):
            raise UserError(f"--steps must be 1 to {MAX_STEPS} and --num-images 1 to {MAX_IMAGES}, "
                            f"got {steps} and {num_images}")
        pipe = self.pipeline(base)
        active = self.set_loras(base, list(loras))
        native = native_resolution(pipe)
        width, height = width or native, height or native
        if width % 8 or height % 8 or not (8 <= width <= MAX_SIDE and 8 <= height <= MAX_SIDE):
            raise UserError(f"--width and --height must be multiples of 8 from 8 to {MAX_SIDE}, got {width}x{height}")
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
        seed = check_seed(seed)
        seed = random.randrange(MAX_SEED + 1) if seed is None else seed
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(num_images)]
        with contextlib.ExitStack() as stack:
            for model in pipeline_components(pipe).values():
                stack.enter_context(bare_while_merged(model))  # blended weights are baked in: base-model speed
            images = pipe([prompt] * num_images, negative_prompt=[negative_prompt] * num_images if negative_prompt else None,
                          num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
                          generator=generators).images
        model = base if base == "builtin" else Path(base).name or base
        out = []
        for i, image in enumerate(images):
            params = GenerationParams(
                prompt=prompt, negative_prompt=negative_prompt, steps=steps, sampler=scheduler, cfg_scale=guidance,
                seed=seed + i, width=width, height=height, model=model,
                loras=[(Path(c.path).stem, c.weight) for _, c in active],
            )
            out.append((image, params))
        return out


def _added(first: LoraChoice, second: LoraChoice) -> LoraChoice:
    """One choice for the same file given twice: the weights add up (as two A1111 tags of one LoRA do), so the
    image and the one tag its parameters record agree."""
    if first.text_weight is None and second.text_weight is None:
        text = None
    else:
        text = (first.weight if first.text_weight is None else first.text_weight) + (
            second.weight if second.text_weight is None else second.text_weight)
    return LoraChoice(first.path, first.weight + second.weight, text)


def next_index(folder: Path) -> int:
    existing = [int(p.name.split("-")[0]) for p in folder.glob("*.png") if p.name.split("-")[0].isdigit()] if folder.is_dir() else []
    return max(existing, default=-1) + 1


__all__ = ["MAX_SEED", "GenerationEngine", "LoraChoice", "check_seed", "next_index"]
