"""GPU benchmark: generation at 512 px, 30 steps, with 0, 1 and 3 LoRAs blended, and weight changes.

    python benchmarks/generate_sd15_gpu.py

SD1.5-architecture pipeline with random weights in fp16 through `GenerationEngine` (what
`lora-diffusion generate` and the UI use). Seconds per image: median of 5 runs per setting, settings
interleaved so clock drift hits all alike. Weight change: median and slowest of 34 slider moves with
3 LoRAs loaded (the periodic fresh blend from W0 is in the slowest).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    from sd15_setup import make_loras, prepare

    from lora_diffusion.generation.engine import GenerationEngine, LoraChoice

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/sd15bench"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    base, _ = prepare(args.work, 64)
    files = make_loras(base, args.work / "loras", 3)
    engine = GenerationEngine(device="cuda", dtype=torch.float16)
    settings = {0: [], 1: [LoraChoice(str(files[0]), 0.8)], 3: [LoraChoice(str(f), w) for f, w in zip(files, (0.8, 0.5, -0.3))]}

    def one_image(loras):
        engine.set_loras(str(base), loras)  # blend first: the timing below is sampling only
        torch.cuda.synchronize()
        t = time.perf_counter()
        engine.generate("a red circle on a blue background", base=str(base), loras=loras, seed=1, steps=30,
                        width=512, height=512, scheduler="DPM++ 2M")
        torch.cuda.synchronize()
        return time.perf_counter() - t

    for loras in settings.values():
        one_image(loras)  # warm-up: cuDNN autotuning, allocator
    times = {k: [] for k in settings}
    for _ in range(args.repeats):
        for k, loras in settings.items():
            times[k].append(one_image(loras))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| LoRAs blended | s / image (512 px, 30 steps, median) | vs base |")
    print("|---|---|---|")
    base_time = statistics.median(times[0])
    for k in settings:
        t = statistics.median(times[k])
        print(f"| {k} | {t:.3f} | {100 * (t / base_time - 1):+.1f}% |")
    moves = []
    for r in range(34):
        loras = [LoraChoice(str(f), w + 0.05 * (r + 1) * (i == r % 3)) for i, (f, w) in enumerate(zip(files, (0.8, 0.5, -0.3)))]
        torch.cuda.synchronize()
        t = time.perf_counter()
        engine.set_loras(str(base), loras)
        torch.cuda.synchronize()
        moves.append(time.perf_counter() - t)
    print(f"\nweight change with 3 LoRAs loaded: median {1000 * statistics.median(moves):.1f} ms, "
          f"slowest {1000 * max(moves):.1f} ms")


if __name__ == "__main__":
    main()
