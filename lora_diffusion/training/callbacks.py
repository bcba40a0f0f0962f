"""What a caller of ``train()`` hears and says while it runs: step records, a stop request, and fault points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class TrainCallbacks:
    """Optional hooks into a run; the trainer calls each one on the main process only.

    ``on_plan`` gets the derived plan and its printed block once the base has loaded, before the first step.
    ``on_step`` gets each finished step's record (step, loss, lr, time, steps, elapsed): the UI draws its curve
    from it. ``should_stop`` is asked after every step; when it says yes, the run checkpoints, saves and returns.
    ``after_checkpoint`` and ``after_step`` run right after a checkpoint is written and at the end of each step:
    tests inject faults there (a ``kill -9``, a Ctrl-C) to show that resuming gives the same file.
    """

    on_plan: Callable[[object, str], None] | None = None
    on_step: Callable[[dict], None] | None = None
    should_stop: Callable[[], bool] | None = None
    after_checkpoint: Callable[[int], None] | None = None
    after_step: Callable[[int], None] | None = None

    def stop_requested(self) -> bool:
        return bool(self.should_stop and self.should_stop())

    def checkpoint_written(self, step: int) -> None:
        if self.after_checkpoint:
            self.after_checkpoint(step)

    def step_finished(self, step: int) -> None:
        if self.after_step:
            self.after_step(step)
