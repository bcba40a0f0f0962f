"""CPU benchmark of blending on SD1.5-shaped models (random weights): re-weighting latency and sampling cost.

    python benchmarks/blend_cpu.py [--latent 32] [--repeats 5]

Weight change: time for GenerationEngine-style re-blend (set weights + merge into the UNet and text
encoder) with 1, 3 and 10 rank-4 attention LoRAs loaded. Sampling cost: UNet forward time (batch 2,
as with guidance) with 0, 1, 3 and 5 LoRAs merged, against the plain base UNet.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from lora_diffusion import LoraConfig, LoraLayer, blend_adapters, inject_adapter, lora_layers
from lora_diffusion.models.reference_configs import build_components


def add_loras(components, count):
    for i in range(count):
        add_loras_named(components, f"l{i}")


def add_loras_named(components, name):
    if True:
        inject_adapter(components["unet"], name, LoraConfig(rank=4))
        inject_adapter(components["te"], name, LoraConfig(rank=4), kind="text")
        for model in (components["unet"], components["te"]):
            for layer in lora_layers(model).values():
                if name in layer.lora_B:
                    torch.nn.init.normal_(layer.lora_B[name].weight, std=0.01)
    for model in (components["unet"], components["te"]):
        for p in model.parameters():
            p.requires_grad_(False)


def reblend(components, weights):
    for model in components.values():
        blend_adapters(model, weights)


def unet_time(unet, latent, repeats):
    x = torch.randn(2, 4, latent, latent)
    ctx = torch.randn(2, 77, 768)
    with torch.no_grad():
        unet(x, 500, ctx)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            unet(x, 500, ctx)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=32, help="latent size for the sampling cost (32 = 256 px)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print("| LoRAs loaded | weight change, median (ms) | slowest (fresh blend from W0) (ms) |")
    print("|---|---|---|")
    for count in (1, 3, 10):
        comps = build_components("sd1", device="cpu")
        add_loras(comps, count)
        names = [f"l{i}" for i in range(count)]
        reblend(comps, dict.fromkeys(names, 1.0))
        times = []
        # 2·REBLEND_EVERY slider moves, so the periodic fresh blends from W0 are in the numbers too
        for r in range(2 * LoraLayer.REBLEND_EVERY + 2):
            t = time.perf_counter()
            reblend(comps, {names[r % count]: 0.05 * (r + 1)})
            times.append(time.perf_counter() - t)
        print(f"| {count} | {1000 * statistics.median(times):.0f} | {1000 * max(times):.0f} |")
        del comps
    # Sampling cost: a plain base UNet and a LoRA-carrying copy with the same weights, timed
    # alternately so machine noise hits both alike.
    base_unet = build_components("sd1", device="cpu")["unet"].eval()
    comps = {"unet": build_components("sd1", device="cpu")["unet"].eval()}
    comps["unet"].load_state_dict(base_unet.state_dict())
    comps["te"] = build_components("sd1", device="cpu")["te"]
    print(f"\n| LoRAs merged | UNet step, batch 2, latent {args.latent}: base / with LoRAs (median ms) | overhead |")
    print("|---|---|---|")
    loaded = 0
    for count in (0, 1, 3, 5):
        for i in range(loaded, count):
            add_loras_named(comps, f"l{i}")
        loaded = count
        reblend(comps, {f"l{i}": 0.5 for i in range(count)})
        base_times, lora_times = [], []
        for _ in range(args.repeats):
            base_times.append(unet_time(base_unet, args.latent, 1))
            lora_times.append(unet_time(comps["unet"], args.latent, 1))
        b, t = statistics.median(base_times), statistics.median(lora_times)
        spread = statistics.median(abs(x / b - 1) for x in base_times)
        print(f"| {count} | {1000 * b:.0f} / {1000 * t:.0f} | {100 * (t / b - 1):+.1f}% (base run-to-run ±{100 * spread:.1f}%) |")


if __name__ == "__main__":
    main()
