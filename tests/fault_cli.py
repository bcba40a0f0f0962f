"""The CLI in a real process with a fault injected through the trainer's callbacks (tests start it as a script).

``python tests/fault_cli.py crash-after-checkpoint N ARGS...``: exits at once with 137 (as ``kill -9`` leaves it, no
clean-up) right after the checkpoint of step N is written. ``python tests/fault_cli.py ctrl-c-after-step N ARGS...``:
a Ctrl-C right after step N. ``python tests/fault_cli.py sigterm-after-step N ARGS...``: the process sends itself
SIGTERM right after step N (as ``timeout`` or a scheduler would). ARGS are ``lora-diffusion``'s own.
"""

import functools
import os
import signal
import sys

from lora_diffusion.cli.main import entry_point
from lora_diffusion.training import trainer
from lora_diffusion.training.callbacks import TrainCallbacks


def _crash(at: int, step: int) -> None:
    if step == at:
        os._exit(137)


def _interrupt(at: int, step: int) -> None:
    if step == at:
        raise KeyboardInterrupt


def _terminate(at: int, step: int) -> None:
    if step == at:
        os.kill(os.getpid(), signal.SIGTERM)


FAULTS = {"sigterm-after-step": lambda at: TrainCallbacks(after_step=functools.partial(_terminate, at)),
          "crash-after-checkpoint": lambda at: TrainCallbacks(after_checkpoint=functools.partial(_crash, at)),
          "ctrl-c-after-step": lambda at: TrainCallbacks(after_step=functools.partial(_interrupt, at))}

if __name__ == "__main__":
    fault, at, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    trainer.train = functools.partial(trainer.train, callbacks=FAULTS[fault](at))
    sys.argv = ["lora-diffusion", *args]
    entry_point()
