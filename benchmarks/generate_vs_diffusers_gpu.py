"""GPU benchmark: `lora-diffusion generate`'s engine with default settings against diffusers' own fp16 pipeline.

    python benchmarks/generate_vs_diffusers_gpu.py --archs sd15 sdxl

Random-weight SD1.5- and SDXL-architecture pipelines (no download). Ours: `GenerationEngine` with the
dtype `--dtype auto` picks on CUDA (what `generate` and the UI use), with no LoRA and with one LoRA
blended at 0.8. Peer: `StableDiffusionPipeline` / `StableDiffusionXLPipeline.from_pretrained(...,
torch_dtype=torch.float16)` with the same DPM++ 2M scheduler. 30 steps; SD1.5 4 images at 512 px,
SDXL 1 image at 1024 px; seconds per image, median and fastest of the repeats after a warm-up round,
runs interleaved in a rotating order (this machine's timings swing by ±30% between identical calls).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

SETTINGS = {"sd15": dict(size=512, images=4), "sdxl": dict(size=1024, images=1)}


def _timed(fn) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def bench(arch: str, work: Path, repeats: int) -> list[str]:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from lora_diffusion.generation.engine import GenerationEngine, LoraChoice
    from lora_diffusion.generation.precision import generation_dtype

    if arch == "sd15":
        from sd15_setup import make_loras, prepare
        base, _ = prepare(work / "sd15", 8)
        lora = make_loras(base, work / "sd15" / "loras", 1)[0]
        peer_cls = StableDiffusionPipeline
    else:
        from sdxl_setup import prepare
        base, data = prepare(work / "sdxl", 4)
        lora = _sdxl_lora(base, work / "sdxl")
        peer_cls = StableDiffusionXLPipeline
    size, images = SETTINGS[arch]["size"], SETTINGS[arch]["images"]
    dtype = generation_dtype("auto", "cuda")
    engine = GenerationEngine(device="cuda", dtype=dtype)
    prompt = "a red circle on a blue background"

    def ours(loras):
        engine.set_loras(str(base), loras)
        return lambda: engine.generate(prompt, base=str(base), loras=loras, seed=1, steps=30, width=size,
                                       height=size, num_images=images, scheduler="DPM++ 2M")

    peer = peer_cls.from_pretrained(str(base), torch_dtype=torch.float16).to("cuda")
    peer.set_progress_bar_config(disable=True)
    peer.scheduler = DPMSolverMultistepScheduler.from_config(peer.scheduler.config)

    def theirs():
        generator = [torch.Generator("cpu").manual_seed(1 + i) for i in range(images)]
        peer([prompt] * images, num_inference_steps=30, width=size, height=size, generator=generator)

    runs = {"diffusers fp16": theirs, "ours, defaults": None, "ours, 1 LoRA at 0.8": None}
    choices = {"ours, defaults": [], "ours, 1 LoRA at 0.8": [LoraChoice(str(lora), 0.8)]}
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for round_ in range(repeats + 1):  # the first round warms up (cuDNN autotuning, allocator)
        # the order rotates every round, so a slow spell of the machine does not land on one run only
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            fn = runs[name] or ours(choices[name])
            times[name].append(_timed(fn) / images)
    rows = []
    peer_median, peer_best = statistics.median(times["diffusers fp16"][1:]), min(times["diffusers fp16"][1:])
    for name in runs:
        median, best = statistics.median(times[name][1:]), min(times[name][1:])
        rows.append(f"| {arch} | {size} px | {name} | {dtype if 'ours' in name else torch.float16} | {median:.3f} | "
                    f"{100 * (median / peer_median - 1):+.1f}% | {best:.3f} | {100 * (best / peer_best - 1):+.1f}% |")
    return rows


def _sdxl_lora(base: Path, work: Path) -> Path:
    """A rank-4 attention LoRA with random B on the SDXL pipeline, saved in kohya layout."""
    out = work / "lora.safetensors"
    if out.exists():
        return out
    from lora_diffusion.adapters.apply import save_adapter
    from lora_diffusion.lora.config import LoraConfig
    from lora_diffusion.lora.inject import inject_adapter, lora_layers
    from lora_diffusion.models.loading import load_pipeline

    pipe = load_pipeline(str(base), dtype=torch.float16)
    inject_adapter(pipe.unet, "b", LoraConfig(rank=4))
    with torch.no_grad():
        for layer in lora_layers(pipe.unet).values():
            layer.lora_B["b"].weight.normal_(0, 0.01)
    save_adapter(out, {"unet": pipe.unet}, "b")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/genbench"))
    parser.add_argument("--archs", nargs="+", default=["sd15", "sdxl"], choices=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    print("| base | size | run | dtype | s / image (30 steps, median) | vs diffusers | fastest | vs diffusers |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for arch in args.archs:
        for row in bench(arch, args.work, args.repeats):
            print(row, flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
