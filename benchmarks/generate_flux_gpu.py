"""GPU benchmark: `lora-diffusion generate`'s engine on a FLUX.1-dev-architecture pipeline (random weights, no
download) with two LoRAs blended, against diffusers' own ``FluxPipeline`` in bf16 with the same two LoRAs
(``load_lora_weights`` + ``set_adapters``).

    python benchmarks/generate_flux_gpu.py --loras /tmp/fluxbench/runs-flux/default.safetensors /tmp/fluxbench/runs-flux/nf4-gc.safetensors

1024 px, 28 steps, guidance 3.5, Euler (FLUX's defaults), one image; seconds per image, median and fastest of the
repeats after a warm-up image. The two pipelines run one after the other (two 12 B pipelines do not both fit an
80 GB card), each on the same random base folder that ``train_flux_gpu.py`` builds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
PROMPT = "a red circle on a blue background"
WEIGHTS = (0.8, 0.6)


def _times(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats + 1):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - started)
    return out[1:]


def ours(base: Path, loras: list[Path], repeats: int) -> tuple[list[float], float]:
    from lora_diffusion.generation.engine import GenerationEngine, LoraChoice

    engine = GenerationEngine(device="cuda", dtype=torch.bfloat16)
    choices = [LoraChoice(str(path), weight) for path, weight in zip(loras, WEIGHTS)]
    engine.set_loras(str(base), choices)
    times = _times(lambda: engine.generate(PROMPT, base=str(base), loras=choices, seed=1, steps=28, guidance=3.5,
                                           width=1024, height=1024, scheduler="Euler"), repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30
    engine = None  # frees the pipeline before the other one loads
    return times, peak


def theirs(base: Path, loras: list[Path], repeats: int) -> tuple[list[float], float]:
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(base), torch_dtype=torch.bfloat16).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    names = [f"lora{i}" for i in range(len(loras))]
    for name, path in zip(names, loras):
        pipe.load_lora_weights(str(path), adapter_name=name)
    pipe.set_adapters(names, adapter_weights=list(WEIGHTS[:len(names)]))
    times = _times(lambda: pipe(PROMPT, num_inference_steps=28, guidance_scale=3.5, width=1024, height=1024,
                                generator=torch.Generator("cpu").manual_seed(1)), repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30
    pipe = None
    return times, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fluxbench"))
    parser.add_argument("--loras", type=Path, nargs=2, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from flux_setup import prepare

    base, _ = prepare(args.work, 8)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    print("| run | s / image (28 steps, median) | fastest | vs diffusers (median) | peak GPU GiB |")
    print("|---|---|---|---|---|", flush=True)
    rows = {}
    for name, run in (("diffusers FluxPipeline bf16, 2 LoRAs", theirs), ("ours, 2 LoRAs blended", ours)):
        torch.cuda.reset_peak_memory_stats()
        rows[name] = run(base, args.loras, args.repeats)
        torch.cuda.empty_cache()
    peer = statistics.median(rows["diffusers FluxPipeline bf16, 2 LoRAs"][0])
    for name, (times, peak) in rows.items():
        median = statistics.median(times)
        print(f"| {name} | {median:.2f} | {min(times):.2f} | {100 * (median / peer - 1):+.1f}% | {peak:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
