"""GPU benchmark: each adapter network type through the trainer's defaults (CUDA graphs on one GPU).

    python benchmarks/networks_gpu.py --archs sd15 sdxl

Random-weight SD1.5 (512 px) / SDXL (1024 px) pipelines, batch 1, rank 4 on attention, bf16, the derived
speed settings; `--network lora|loha|lokr` and `--dora`. Reports steady steps/s (median step time after
warm-up), peak GPU memory and the mean loss of the last 20 steps (same seed, data and noise in every run).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

SIZE = {"sd15": 512, "sdxl": 1024}
NETWORKS = {"lora": {}, "loha": {"network": "loha"}, "lokr": {"network": "lokr"}, "lora+dora": {"dora": True},
            "loha+dora": {"network": "loha", "dora": True}}


def run(arch: str, base: Path, data: Path, out: Path, name: str, steps: int) -> dict:
    from lora_diffusion.training.config import TrainConfig
    from lora_diffusion.training.trainer import train

    times: list[float] = []
    cfg = TrainConfig(base=str(base), data=str(data), output=str(out / f"{arch}-{name}.safetensors"),
                      resolution=SIZE[arch], steps=steps, batch_size=1, rank=4, alpha=4, lr=1e-4, seed=0,
                      mixed_precision="bf16", compile=False, **NETWORKS[name])
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    result = train(cfg, progress=False, on_step=lambda r: (torch.cuda.synchronize(), times.append(time.perf_counter())))
    gaps = [b - a for a, b in zip(times[10:], times[11:])]
    return {"steps_s": 1 / statistics.median(gaps), "peak": result.peak_gib, "loss": statistics.mean(result.losses[-20:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/netbench"))
    parser.add_argument("--archs", nargs="+", default=["sd15"], choices=list(SIZE))
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    print("| base | network | steps/s | peak GiB | loss (last 20) |")
    print("|---|---|---|---|---|", flush=True)
    for arch in args.archs:
        if arch == "sd15":
            from sd15_setup import prepare
        else:
            from sdxl_setup import prepare
        base, data = prepare(args.work / arch, 8)
        for name in args.networks:
            try:
                r = run(arch, base, data, args.work / "runs", name, args.steps)
            except Exception as error:  # one type failing must not hide the others' numbers
                print(f"| {arch} | {name} | failed: {type(error).__name__}: {str(error)[:200]} |", flush=True)
                continue
            print(f"| {arch} | {name} | {r['steps_s']:.2f} | {r['peak']:.2f} | {r['loss']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
