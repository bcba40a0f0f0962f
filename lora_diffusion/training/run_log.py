"""What a run tells as it goes: the progress bar, the start-up breakdown and the time estimate, the per-step
jsonl log, TensorBoard scalars and the caller's ``on_step`` (all on the main process only)."""

from __future__ import annotations

import json
import sys
import time
from typing import Callable

from ..startup import describe_startup
from .cuda_graphs import GraphedUNet
from .plan import busy_machine_note, format_duration, long_cpu_run_advice

UNTIMED_STEPS = 3  # warm-up steps left out of the duration estimate


class RunLog:
    """The run's log; ``losses`` holds this process's finished steps' losses (skipped steps have none)."""

    def __init__(self, run, progress: bool, on_step: Callable[[dict], None] | None):
        self.run, self.cfg, self.clock = run, run.cfg, run.clock
        self.main, self.on_step = run.main, on_step
        self.start_step = run.start_step
        self.losses: list[float] = []
        self.val_losses: list[tuple[int, float]] = []  # (step, held-out loss) of this process's evaluations
        self.first_step_done: float | None = None
        self.timed_from: tuple[int, float] | None = None
        self.estimate_due = True
        self.progress = progress and self.main
        self.tracker = self.jsonl = None
        if self.main:
            run.paths.logs.mkdir(parents=True, exist_ok=True)
            self.tracker = _trackers(run)
            self.jsonl = (run.paths.logs / "train_log.jsonl").open("a")
        run.clock.mark("data and set-up")
        self.bar = _progress(self.cfg.steps, self.start_step, enabled=self.progress)
        if isinstance(run.denoiser.forward, GraphedUNet) and self.progress:
            run.denoiser.forward.report = self.note

    def note(self, text: str) -> None:
        """A line of its own above the progress bar (never glued to it)."""
        self.bar.write(text, file=sys.stderr) if not self.bar.disable else print(text, file=sys.stderr)

    def skipped(self, step: int) -> None:
        if self.main:
            print(f"warning: step {step}: NaN/inf loss or gradient; update skipped", file=sys.stderr)
            self.jsonl.write(json.dumps({"step": step, "loss": None, "skipped": "non-finite loss or gradient"}) + "\n")

    def step_done(self, step: int, loss: float, lr: float, val_loss: float | None = None) -> None:
        """Step ``step`` finished with ``loss`` (and the held-out images' ``val_loss`` when evaluated): timings,
        the estimate, the log line, the bar."""
        self.losses.append(loss)
        self._timings(step)
        if not self.main:
            return
        record = {"step": step, "loss": loss, "lr": lr, "time": round(time.time() - self.clock.started, 3)}
        if val_loss is not None:
            record["val_loss"] = val_loss
            self.val_losses.append((step, val_loss))
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tracker:
            values = {"train/loss": loss, "train/lr": lr} | ({} if val_loss is None else {"val/loss": val_loss})
            self.tracker.log(values, step=step)
        if self.on_step:
            self.on_step(record | {"steps": self.cfg.steps, "elapsed": time.time() - self.clock.started})
        self.bar.update(1)
        shown = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}"}
        if self.val_losses:
            shown["val"] = f"{self.val_losses[-1][1]:.4f}"
        self.bar.set_postfix(shown)

    def _timings(self, step: int) -> None:
        if step == self.start_step + 1:
            self.first_step_done = self.clock.mark("first step")
            if self.progress:
                self.note(describe_startup(self.clock.phases))
        if step == self.start_step + UNTIMED_STEPS:
            self.timed_from = (step, time.time())  # lazy set-up, autotuning and allocator growth are over
        elif self.main and self.estimate_due and self.timed_from and step > self.timed_from[0]:
            timed, seconds = step - self.timed_from[0], time.time() - self.timed_from[1]
            if (timed >= 3 and seconds >= 5) or timed >= 20:
                self.estimate_due = False
                step_seconds = seconds / timed
                if self.progress:
                    self.note(f"estimate: {format_duration(step_seconds * (self.cfg.steps - step))} to go "
                              f"({step_seconds:.2f} s/step over steps {self.timed_from[0] + 1}-{step}; "
                              f"first step {format_duration(self.first_step_done - self.clock.job_t0)} after start)")
                for advice in (long_cpu_run_advice(self.cfg, step_seconds, self.run.device),
                               busy_machine_note(step_seconds, self.run.device, self.cfg.cpu_threads)):
                    if advice:
                        self.note(advice)

    def curve(self) -> list[tuple[int, float]]:
        """(step, loss) of the whole run — a resumed run's earlier steps from its checkpoint, then this process's —
        thinned to what an adapter's metadata keeps."""
        from .curves import thin

        own = [(self.start_step + 1 + i, round(float(v), 6)) for i, v in enumerate(self.losses)]
        return thin(list(self.run.prior_curve) + own)

    def first_step_s(self) -> float | None:
        return None if self.first_step_done is None else self.first_step_done - self.clock.job_t0

    def close_bar(self) -> None:
        self.bar.close()

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tracker:
            self.tracker.end_training()


def _trackers(run):
    """accelerate's trackers of ``--log-with`` started for this run (None without any): TensorBoard under the log
    folder, wandb offline unless it can reach its server."""
    from .trackers import PROJECT, tracker_config, wandb_offline_if_needed

    accelerator = run.accelerator
    if not accelerator.log_with:
        return None
    names = [str(getattr(t, "value", t)) for t in accelerator.log_with]
    wandb_offline_if_needed(names, report=True)
    accelerator.init_trackers(PROJECT, config=tracker_config(run.cfg),
                              init_kwargs={"wandb": {"dir": str(run.paths.logs), "name": run.paths.output.stem}})
    return accelerator


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)
