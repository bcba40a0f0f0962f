"""Where an SDXL LoRA step's time and memory go on a GPU: the bare UNet step (no data, no trainer)
under several precision/layout/compile choices, to pick the trainer's defaults.

    python benchmarks/profile_sdxl_step.py --batches 1 4 --variants autocast bf16 bf16-gc bf16-compile

SDXL-architecture UNet with random weights (bf16), rank-4 LoRA on attention Q/K/V/O (fp32 masters),
1024 px (128×128 latents), fused AdamW on the LoRA parameters. Prints img/s and peak memory.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F


def build_unet():
    from lora_diffusion.lora.config import LoraConfig
    from lora_diffusion.lora.inject import inject_adapter
    from lora_diffusion.models.reference_configs import SDXL_UNET

    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel(**SDXL_UNET).to(torch.bfloat16)
    unet.requires_grad_(False)
    inject_adapter(unet, "lora", LoraConfig(rank=4, alpha=4))
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return unet


def step_fn(unet, batch: int, autocast: bool, channels_last: bool):
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    latents = torch.randn(batch, 4, 128, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    if channels_last:
        latents = latents.contiguous(memory_format=torch.channels_last)
    states = torch.randn(batch, 77, 2048, device="cuda", generator=g, dtype=torch.bfloat16)
    added = {"text_embeds": torch.randn(batch, 1280, device="cuda", generator=g, dtype=torch.bfloat16),
             "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * batch, device="cuda", dtype=torch.bfloat16)}
    t = torch.randint(0, 1000, (batch,), device="cuda", generator=g)
    target = torch.randn_like(latents)

    def step():
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            pred = unet(latents, t, states, added_cond_kwargs=added).sample
        loss = F.mse_loss(pred.float(), target.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(variant: str, batch: int, iters: int) -> dict:
    unet = build_unet()
    autocast = variant.startswith("autocast")
    channels_last = "-cl" in variant
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if "-gc" in variant:
        unet.enable_gradient_checkpointing()
    unet.train()
    model = unet
    if "-compile" in variant:
        model = torch.compile(unet, mode="max-autotune-no-cudagraphs" if "-autotune" in variant else None)
    step = step_fn(model, batch, autocast, channels_last)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first = time.perf_counter() - started
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    result = {"variant": variant, "batch": batch, "img_s": batch / statistics.median(times),
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "first_s": first}
    del unet, model, step
    torch.cuda.empty_cache()
    torch._dynamo.reset()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--variants", nargs="+", default=["autocast", "bf16", "bf16-cl", "bf16-gc"])
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| variant | batch | img/s | peak GiB | first step (s) |\n|---|---|---|---|---|", flush=True)
    for variant in args.variants:
        for batch in args.batches:
            r = measure(variant, batch, args.iters)
            print(f"| {r['variant']} | {r['batch']} | {r['img_s']:.2f} | {r['peak_gib']:.2f} | {r['first_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
