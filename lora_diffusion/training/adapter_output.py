"""The files a run writes from its trained weights: the adapter (periodic, partial, final — rescued elsewhere when
its folder cannot take it) and the validation grids."""

from __future__ import annotations

import contextlib
import math
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..adapters.apply import components_architecture, pipeline_components, save_adapter
from ..errors import UserError
from ..families import get
from ..safe_write import atomic_write
from .adapter_metadata import adapter_metadata
from .optimizers import evaluation_weights
from .run_setup import ADAPTER


def save_trained(run, path: Path, steps: int, curve: list[tuple[int, float]] = ()) -> None:
    """The run's adapter as it is now, with its metadata, at ``path``."""
    cfg = run.cfg
    components = pipeline_components(run.pipe)
    arch = components_architecture(components)
    if not cfg.train_text_encoder:
        for role in ("te", "te1", "te2"):
            components.pop(role, None)
    metadata = adapter_metadata(cfg, run.plan, run.data, path, steps, run.clock.started, curve)
    layout = get(arch).file_layouts[0]  # the family's default: kohya (BFL for FLUX), or diffusers for SD3
    with run.ema.applied() if run.ema is not None else evaluation_weights(run.optimizer):
        save_adapter(path, components, ADAPTER, dtype=cfg.save_dtype, base=arch, metadata=metadata, layout=layout)


def save_or_rescue(output: Path, checkpoint_dir: Path, save: Callable[[Path], None]) -> None:
    """Write the finished LoRA; if ``output`` cannot be written (a full disk, a read-only folder), the trained
    weights are still in memory: write them beside the checkpoints or in the temp folder, and say where."""
    try:
        save(output)
        return
    except UserError as error:
        what = str(error).split(". Free disk space")[0]  # "could not write X (why); any earlier file … unchanged"
    for folder in (Path(checkpoint_dir), Path(tempfile.gettempdir())):
        rescue = folder / output.name
        if rescue.resolve() == output.resolve():
            continue
        try:
            save(rescue)
        except UserError:
            continue
        raise UserError(f"{what}; the trained LoRA was written to {rescue} instead (move it where you want it)") from None
    raise UserError(f"{what}; nor could it be written beside the checkpoints or in the temp folder: free disk space "
                    "and run again with --resume latest") from None


@contextlib.contextmanager
def _sampling(run):
    """The pipeline ready to draw: encoders that offload_encoders moved off the GPU back briefly, the weights as
    the files hold them (schedule-free's average); training mode again afterwards."""
    device = run.denoiser.model.device
    models = [m for m in run.pipe.components.values()
              if isinstance(m, torch.nn.Module) and m is not run.denoiser.model]
    offloaded = [m for m in models if m.device != device]
    for model in offloaded:
        model.to(device)
    try:
        with evaluation_weights(run.optimizer):
            yield run.pipe
    finally:
        for model in offloaded:
            model.to("cpu")
        run.denoiser.prepared.train()


@torch.no_grad()
def validation_grid(run, path: Path) -> None:
    """A near-square grid of images (2×2 for four), a prompt each (the configured ones, or the first four captions),
    at the run's size: a row of four was a strip the UI's gallery showed a quarter high."""
    from PIL import Image

    cfg, resolution = run.cfg, run.cfg.resolution
    prompts = cfg.validation_prompts or list(dict.fromkeys(e.caption for e in run.data.items))[:4]
    with _sampling(run) as pipe:
        images = pipe(prompts, num_inference_steps=cfg.validation_steps, height=resolution, width=resolution,
                      generator=torch.Generator().manual_seed(cfg.seed)).images
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (resolution * columns, resolution * rows), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * resolution, (i // columns) * resolution))
    with atomic_write(path) as tmp:
        grid.save(tmp, format="PNG")


@torch.no_grad()
def prompt_samples(run, folder: Path, step: int) -> list[Path]:
    """One image per line of ``--sample-prompts`` (kohya's format), each with its own size, seed, CFG and steps,
    saved as ``step_NNNNNN-KK.png`` with A1111's parameters (the LoRA at weight 1 named in them)."""
    from ..generation.params import GenerationParams, save_png

    written = []
    with _sampling(run) as pipe:
        for k, p in enumerate(run.sample_prompts):
            image = pipe(p.prompt, negative_prompt=p.negative or None, num_inference_steps=p.steps,
                         guidance_scale=p.cfg_scale, height=p.height, width=p.width,
                         generator=torch.Generator().manual_seed(p.seed)).images[0]
            params = GenerationParams(prompt=p.prompt, negative_prompt=p.negative, steps=p.steps,
                                      sampler=type(pipe.scheduler).__name__, cfg_scale=p.cfg_scale, seed=p.seed,
                                      width=p.width, height=p.height, model=Path(run.cfg.base).name or "builtin",
                                      loras=[(run.paths.output.stem, 1.0)])
            written.append(save_png(image, folder / f"step_{step:06d}-{k:02d}.png", params))
    return written
