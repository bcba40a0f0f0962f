"""`lora-diffusion quickstart`: the README's main job.

Until the trainer lands this runs the LoRA engine end to end on a tiny random
SD1-architecture pipeline: inject, fit a LoRA to a target, save, inspect, load
back, blend at weights 0 / 0.5 / 1, and write a comparison grid.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "quickstart",
        help="run the main job on the built-in example (offline, CPU)",
        description="Run the quickstart: LoRA engine demo on a tiny model, writing files to --out.",
    )
    parser.add_argument("--out", default="quickstart-output", help="folder for the adapter and the comparison grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from .. import LoraConfig, inject_adapter, load_adapter, parameter_report, pipeline_components, save_adapter
    from .. import delete_adapter, set_adapter_weight
    from ..models.tiny import tiny_pipeline

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    pipe = tiny_pipeline("sd1", seed=args.seed)
    components = pipeline_components(pipe)
    inject_adapter(components["unet"], "demo", LoraConfig(rank=4, alpha=4), "attn")
    inject_adapter(components["te"], "demo", LoraConfig(rank=4, alpha=4), "attn", kind="text")
    print(parameter_report(*components.values()))

    # Fit the LoRA so the UNet's output moves toward a fixed target: a stand-in for
    # the style-training objective, exercising gradients through A and B only.
    unet = components["unet"]
    generator = torch.Generator().manual_seed(args.seed)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 4, 768, generator=generator)
    target = torch.randn(2, 4, 8, 8, generator=generator)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for step in range(30):
        loss = torch.nn.functional.mse_loss(unet(latents, 10, context).sample, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in (0, 29):
            print(f"step {step + 1:2d}  loss {loss.item():.4f}")
    path = save_adapter(out / "demo.safetensors", components, "demo")
    print(f"wrote {path} ({path.stat().st_size / 1e3:.1f} kB)")

    delete_adapter(components["unet"], "demo")
    delete_adapter(components["te"], "demo")
    name = load_adapter(path, components)
    images = []
    for weight in (0.0, 0.5, 1.0):
        set_adapter_weight(components["unet"], name, weight)
        set_adapter_weight(components["te"], name, weight)
        image = pipe(
            "a red circle", num_inference_steps=10, height=64, width=64,
            generator=torch.Generator().manual_seed(args.seed),
        ).images[0]
        images.append(image)
    grid = Image.new("RGB", (64 * len(images), 64))
    for i, image in enumerate(images):
        grid.paste(image, (64 * i, 0))
    grid_path = out / "comparison.png"
    grid.save(grid_path)
    print(f"wrote {grid_path} (LoRA weight 0, 0.5, 1.0)")
    print(f"done in {time.time() - start:.1f} s")
    return 0
