"""GPU benchmark: memory, speed and loss of LoRA training per --base-precision (QLoRA-style bases).

    python benchmarks/base_precision_gpu.py --archs sd15 sdxl --precisions bf16 int8 fp8 nf4

Random-weight SD1.5 (512 px) and SDXL (1024 px) pipelines, batch 1, rank 4 on attention, bf16
training, gradient checkpointing, encoders offloaded after caching — the issue's memory recipe —
through `lora_diffusion.training.train`. Reported: peak GPU memory while training
(`torch.cuda.max_memory_allocated`, reset after the first step so the one-off encode pass is left
out; the whole run's peak beside it), steady steps/s (median), and the mean loss of the last 20 steps
(same seed, data and noise in every run, so only the base's precision differs).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

SIZE = {"sd15": 512, "sdxl": 1024}


def run(arch: str, base: Path, data: Path, out: Path, precision: str, steps: int) -> dict:
    from lora_diffusion.training.config import TrainConfig
    from lora_diffusion.training.trainer import train

    times: list[float] = []
    before_steps: list[float] = []

    def on_step(record):
        torch.cuda.synchronize()
        times.append(time.perf_counter())
        if len(times) == 1:
            before_steps.append(torch.cuda.max_memory_allocated() / 2**30)
            torch.cuda.reset_peak_memory_stats()

    cfg = TrainConfig(base=str(base), data=str(data), output=str(out / f"{arch}-{precision}.safetensors"),
                      resolution=SIZE[arch], steps=steps, batch_size=1, rank=4, alpha=4, lr=1e-4, seed=0,
                      mixed_precision="bf16", gradient_checkpointing=True, offload_encoders="on",
                      base_precision=precision, compile=False)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train(cfg, progress=False, on_step=on_step)
    total = time.perf_counter() - started
    gaps = [b - a for a, b in zip(times[5:], times[6:])]
    training_peak = torch.cuda.max_memory_allocated() / 2**30
    return {"arch": arch, "precision": precision, "peak_gib": training_peak,
            "run_peak_gib": max(training_peak, before_steps[0]), "steps_s": 1 / statistics.median(gaps),
            "loss": statistics.mean(result.losses[-20:]), "total_s": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/precbench"))
    parser.add_argument("--archs", nargs="+", default=["sd15", "sdxl"], choices=list(SIZE))
    parser.add_argument("--precisions", nargs="+", default=["bf16", "int8", "fp8", "nf4"])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    print("| base | base precision | peak while training (GiB) | peak whole run (GiB) | steps/s | loss (last 20) | vs bf16 | run (s) |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for arch in args.archs:
        if arch == "sd15":
            from sd15_setup import prepare
        else:
            from sdxl_setup import prepare
        base, data = prepare(args.work / arch, 8)
        reference = None
        for precision in args.precisions:
            try:
                r = run(arch, base, data, args.work / "runs", precision, args.steps)
            except Exception as error:  # one precision failing must not hide the others' numbers
                print(f"| {arch} | {precision} | failed: {type(error).__name__}: {str(error)[:160]} |", flush=True)
                continue
            reference = reference or r["loss"]
            print(f"| {arch} | {precision} | {r['peak_gib']:.2f} | {r['run_peak_gib']:.2f} | {r['steps_s']:.2f} | "
                  f"{r['loss']:.4f} | {100 * (r['loss'] / reference - 1):+.1f}% | {r['total_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
