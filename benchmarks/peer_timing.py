"""Times a peer's training script (a diffusers example) the way this project's benchmarks time its own trainer.

    python benchmarks/peer_timing.py OUT.json PIPELINE_CLASS SCRIPT.py [script arguments...]

Runs SCRIPT in this process unchanged, after wrapping two things it calls: the optimizer step (a timestamp
after each, the GPU synchronised) and ``PIPELINE_CLASS.save_lora_weights`` (the moment the adapter file is
written, then exit: the script's reload of the whole pipeline for a final validation is not part of training).
Writes {"step_times": [s since process start...], "file_written_s", "peak_gib"} to OUT.json.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time

STARTED = time.perf_counter()


def main() -> None:
    out, pipeline_class, script, *script_args = sys.argv[1:]
    import accelerate.optimizer
    import diffusers
    import torch

    stamps: list[float] = []
    step = accelerate.optimizer.AcceleratedOptimizer.step

    def timed_step(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        torch.cuda.synchronize()
        stamps.append(time.perf_counter() - STARTED)
        return result

    accelerate.optimizer.AcceleratedOptimizer.step = timed_step
    pipeline = getattr(diffusers, pipeline_class)
    save = pipeline.save_lora_weights

    def timed_save(*args, **kwargs):
        save(*args, **kwargs)
        written = time.perf_counter() - STARTED
        with open(out, "w") as f:
            json.dump({"step_times": stamps, "file_written_s": written,
                       "peak_gib": torch.cuda.max_memory_allocated() / 2**30}, f)
        sys.stdout.flush()
        os._exit(0)

    pipeline.save_lora_weights = timed_save
    sys.argv = [script, *script_args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
