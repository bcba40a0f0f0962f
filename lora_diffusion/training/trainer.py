"""Train one LoRA: set up (plan, base, LoRA, data, optimizer) → steps → checkpoints and samples → save.

``train()`` reads like this description; each part is its own module: ``run_setup`` (everything before the first
step), ``batch_feed`` (what each step trains on), ``optimizer_step`` (one step and the NaN policy), ``run_log``
(progress, estimate, logs), ``adapter_output`` and ``adapter_metadata`` (the files written), ``checkpoint``
(resumable state) and the family's objective (the step's math).
"""

from __future__ import annotations

import glob
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import Interrupted
from .adapter_output import prompt_samples, save_or_rescue, save_trained, validation_grid
from .batch_feed import BatchFeed
from .callbacks import TrainCallbacks
from .config import TrainConfig
from .optimizer_step import NanPolicy, OptimizerStep
from .run_log import RunLog
from .run_setup import RunState, load_examples, set_up
from .validation_loss import validation_interval

__all__ = ["TrainCallbacks", "TrainResult", "load_examples", "train"]


@dataclass
class TrainResult:
    output: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    skipped: list = field(default_factory=list)
    skipped_steps: int = 0  # updates skipped for a NaN/inf loss or gradient (nan_policy: skip)
    peak_gib: float | None = None  # peak GPU memory allocated by this process (CUDA only)
    first_step_s: float | None = None  # from the start (of the process, under the CLI) to the first step done
    start_step: int = 0  # the step a resumed run continued from (0: a fresh run)
    removed_partials: list = field(default_factory=list)  # partial LoRAs of interrupted runs, obsolete once finished
    checkpoints: Path | None = None  # the checkpoint folder, when checkpoints remain after the run


def train(cfg: TrainConfig, *, progress: bool = True, on_step: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """Run one training job as configured; returns where the adapter went and the losses.

    ``on_step`` and ``should_stop`` are shorthands for the same ``callbacks`` fields (see ``TrainCallbacks``).
    """
    callbacks = callbacks or TrainCallbacks(on_step=on_step, should_stop=should_stop)
    threads = torch.get_num_threads()  # the run sets its own (cpu_threads); an in-process caller gets its back
    try:
        return _train(cfg, progress, callbacks)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, progress: bool, callbacks: TrainCallbacks) -> TrainResult:
    run = set_up(cfg, progress, callbacks.on_plan)
    cfg = run.cfg
    if run.start_step >= cfg.steps and run.paths.output.exists():
        return TrainResult(run.paths.output, run.start_step, [], 0.0, run.data.skipped)
    feed = BatchFeed(run)
    log = RunLog(run, progress, callbacks.on_step)
    step_once, nan_policy = OptimizerStep(run, feed), NanPolicy(cfg.nan_policy, cfg.max_bad_steps)
    completed = run.start_step  # steps whose update is fully applied (what a Ctrl-C checkpoint holds)
    run.train_mode()
    try:
        for step in range(run.start_step + 1, cfg.steps + 1):
            loss, finite = step_once(step - 1)
            completed = step
            if not nan_policy.accept(step, finite):
                log.skipped(step)
                continue
            log.step_done(step, loss, run.lr_scheduler.get_last_lr()[0], _validation_loss(run, step))
            stop = callbacks.stop_requested()
            _periodic_outputs(run, step, stop, callbacks, log.curve)
            if stop:
                break
            callbacks.step_finished(step)
    except KeyboardInterrupt:
        log.close_bar()  # the message below gets a line of its own
        _save_interrupted(run, completed, log.curve())
    finally:
        feed.close()
    log.close_bar()
    run.accelerator.wait_for_everyone()
    if run.main:
        save_or_rescue(run.paths.output, run.paths.checkpoints,
                       lambda path: save_trained(run, path, completed, log.curve()))
        if run.sample_prompts:
            prompt_samples(run, run.paths.logs / "samples", completed)
        elif cfg.sample_every:
            validation_grid(run, run.paths.logs / "samples" / "final.png")
    log.close()
    peak = torch.cuda.max_memory_allocated() / 2**30 if run.accelerator.device.type == "cuda" else None
    removed = _remove_partials(run.paths.output) if run.main and completed == cfg.steps else []
    checkpoints = run.paths.checkpoints if any(run.paths.checkpoints.glob("checkpoint-*")) else None
    return TrainResult(run.paths.output, completed, log.losses, _seconds(run), run.data.skipped, nan_policy.skipped,
                       peak, log.first_step_s(), run.start_step, removed, checkpoints)


def _validation_loss(run: RunState, step: int) -> float | None:
    """The held-out images' loss when an evaluation is due after ``step`` (and after the last step)."""
    if run.validation is None:
        return None
    if step % validation_interval(run.cfg.validation_every, run.cfg.steps) and step != run.cfg.steps:
        return None
    return run.validation(run)


def _remove_partials(output: Path) -> list[Path]:
    """The partial LoRAs earlier interruptions of this run left beside its output: the finished file replaces
    them (its checkpoints stay, to continue the run with more steps)."""
    removed = []
    for partial in sorted(output.parent.glob(f"{glob.escape(output.stem)}-partial-step*.safetensors")):
        try:
            partial.unlink()
            removed.append(partial)
        except OSError:
            pass  # kept: it was only a convenience copy
    return removed


def _periodic_outputs(run: RunState, step: int, stop: bool, callbacks: TrainCallbacks,
                      curve: Callable[[], list]) -> None:
    """The checkpoint, the adapter file and the validation grid that are due after ``step``."""
    cfg = run.cfg
    if not run.main:
        return
    if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or stop) and step < cfg.steps:
        run.save_checkpoint(step, curve())
        callbacks.checkpoint_written(step)
    if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
        output = run.paths.output
        save_trained(run, output.with_name(f"{output.stem}-step{step:06d}.safetensors"), step)
    if cfg.sample_every and step % cfg.sample_every == 0 and step < cfg.steps:
        if run.sample_prompts:
            prompt_samples(run, run.paths.logs / "samples", step)
        else:
            validation_grid(run, run.paths.logs / "samples" / f"step_{step:06d}.png")


def _save_interrupted(run: RunState, completed: int, curve: list[tuple[int, float]]) -> None:
    """Ctrl-C: the finished steps are kept as a checkpoint and a partial LoRA, and the user is told how to go on."""
    if not run.main or completed == run.start_step:
        raise Interrupted("interrupted before any step finished; nothing was saved") from None
    where = run.save_checkpoint(completed, curve)
    output = run.paths.output
    partial = output.with_name(f"{output.stem}-partial-step{completed:06d}.safetensors")
    save_trained(run, partial, completed, curve)
    raise Interrupted(f"interrupted after step {completed} of {run.cfg.steps}: wrote the partial LoRA {partial} "
                      f"and the checkpoint {where}; continue with --resume latest") from None


def _seconds(run: RunState) -> float:
    return time.time() - run.clock.started
