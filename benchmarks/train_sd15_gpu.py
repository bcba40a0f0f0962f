"""GPU benchmark: this project's trainer on an SD1.5-architecture pipeline (random weights, no download).

    python benchmarks/train_sd15_gpu.py --batches 1 8 32 --out $OUT/train_sd15.md

Builds the SD1.5-shaped pipeline locally (tokenizer from the built-in model's CLIP vocabulary), writes a
procedural 512 px captioned folder, then runs `lora_diffusion.training.train` (the code behind
`lora-diffusion train`: data loading, latent/text caching, accelerate loop) at each batch size with the
peer's settings (512 px, bf16, rank 4, attention Q/K/V/O) and reports steady-state images/s and peak
GPU memory.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def build_pipeline(folder: Path) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lora_diffusion.models.builtin import builtin_path
    from lora_diffusion.models.reference_configs import CLIP_L, SD15_UNET

    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)), unet=UNet2DConditionModel(**SD15_UNET),
        tokenizer=CLIPTokenizer.from_pretrained(str(builtin_path() / "tokenizer")),
        scheduler=DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(str(folder), safe_serialization=True)


def write_data(folder: Path, count: int) -> None:
    import random

    from lora_diffusion.world.scenes import caption, render, sample_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(count):
        scene = sample_scene(rng)
        render(scene, 512, supersample=1).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(caption(scene))


def run(base: Path, data: Path, out: Path, batch: int, steps: int, extra: dict) -> tuple[float, float]:
    from lora_diffusion.training.config import TrainConfig
    from lora_diffusion.training.trainer import train

    times: list[float] = []
    cfg = TrainConfig(base=str(base), data=str(data), output=str(out / f"b{batch}.safetensors"), resolution=512,
                      steps=steps, batch_size=batch, rank=4, alpha=4, lr=1e-4, mixed_precision="bf16", **extra)
    torch.cuda.reset_peak_memory_stats()
    train(cfg, progress=False, on_step=lambda record: (torch.cuda.synchronize(), times.append(time.perf_counter())))
    peak = torch.cuda.max_memory_allocated() / 2**30
    warm = max(3, len(times) // 3)
    gaps = [b - a for a, b in zip(times[warm:], times[warm + 1 :])]
    return batch / statistics.median(gaps), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/sd15bench"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    base, data = args.work / "sd15-random", args.work / "data"
    started = time.time()
    if not (base / "model_index.json").exists():
        build_pipeline(base)
    if not data.exists():
        write_data(data, args.images)
    print(f"setup {time.time() - started:.0f} s; {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    lines = ["| batch | img/s (steady) | peak GPU memory (GiB) |", "|---|---|---|"]
    for batch in args.batches:
        steps = max(12, 3 * args.images // batch)
        rate, peak = run(base, data, args.work / "runs", batch, steps, {})
        lines.append(f"| {batch} | {rate:.1f} | {peak:.1f} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
