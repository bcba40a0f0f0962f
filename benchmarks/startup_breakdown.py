"""Where the time before the first training step goes (issue 16): imports, device set-up, base loading,
the up-front encode pass, CUDA-graph capture. Wraps the trainer's phases with timers; trains 20 steps.

    python benchmarks/startup_breakdown.py [--batch 1]
"""

import argparse
import sys
import time

START = time.perf_counter()
marks: list[tuple[str, float]] = []


def mark(name: str) -> None:
    marks.append((name, time.perf_counter() - START))


def timed(module, attr: str, name: str) -> None:
    real = getattr(module, attr)

    def wrapper(*args, **kwargs):
        mark(f"{name} start")
        try:
            return real(*args, **kwargs)
        finally:
            mark(f"{name} end")

    setattr(module, attr, wrapper)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--profile-load", action="store_true", help="cProfile one base load first")
    args = parser.parse_args()
    import torch

    mark("import torch")
    import diffusers  # noqa: F401
    import transformers  # noqa: F401
    import accelerate  # noqa: F401

    mark("import diffusers, transformers, accelerate")
    from pathlib import Path

    from sd15_setup import prepare

    from lora_diffusion.training import trainer
    from lora_diffusion.training.config import TrainConfig
    from lora_diffusion.training.step_inputs import StepInputs

    mark("import lora_diffusion")
    base, data = prepare(Path("/tmp/sd15bench"), 64)
    mark("benchmark data ready (not part of a job)")
    timed(trainer, "load_pipeline", "load base")
    timed(trainer.DeviceFacts, "detect", "device detect")
    timed(StepInputs, "encode_all", "encode pass")
    timed(torch.cuda, "make_graphed_callables", "graph capture")
    steps = []
    cfg = TrainConfig(base=str(base), data=str(data), output="/tmp/breakdown.safetensors", steps=20,
                      batch_size=args.batch, rank=4, alpha=4)
    if "--profile-load" in sys.argv:
        import cProfile
        import pstats

        from lora_diffusion.models.loading import load_pipeline

        profile = cProfile.Profile()
        profile.runcall(load_pipeline, str(base), dtype=torch.bfloat16)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)
    trainer.train(cfg, progress=False, on_step=lambda r: steps.append(time.perf_counter() - START))
    mark("train() returned")
    last = 0.0
    for name, at in sorted(marks + [("first step done", steps[0])], key=lambda m: m[1]):
        print(f"{at:7.2f} s  (+{at - last:5.2f})  {name}")
        last = at
    print(f"steps 2-20: {(steps[-1] - steps[1]) / 18 * 1000:.1f} ms/step", file=sys.stderr)
