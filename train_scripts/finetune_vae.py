"""Widen the built-in VAE's colour range without moving its latent space.

The VAE of the first training run saw only the world's 15 colours and decodes any
other colour to the nearest of them, so no LoRA could teach the base a new
palette (sepia, pastel, ...). This fine-tunes encoder and decoder on world scenes
recoloured with random continuous colours, random colour matrices, pixelation and
posterisation, while an anchor loss keeps the encoder's latents of ordinary world
images where they were, so the trained UNet stays valid.

    python train_scripts/finetune_vae.py --model lora_diffusion/builtin/model --out new_vae
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lora_diffusion.world.scenes import render, sample_scene


def _render_chunk(task):
    seed, count = task
    rng = random.Random(seed)
    worlds, masks = np.empty((count, 64, 64, 3), np.uint8), np.empty((count, 64, 64), np.uint8)
    for i in range(count):
        scene = sample_scene(rng)
        worlds[i] = np.asarray(render(scene))
        scene.color, scene.background = "white", "black"
        masks[i] = np.asarray(render(scene).convert("L"))
    return worlds, masks


def recolour(masks: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Silhouettes (N×1×H×W in [0, 1]) in random colours, random tones and textures; N×3×H×W in [-1, 1]."""
    n, dev = masks.shape[0], masks.device
    obj = torch.rand(n, 3, 1, 1, device=dev, generator=g)
    bg = torch.rand(n, 3, 1, 1, device=dev, generator=g)
    x = bg * (1 - masks) + obj * masks
    # random colour matrix blended with identity: tints, sepia-like tones, greys, channel swaps
    mix = torch.rand(n, 1, 1, device=dev, generator=g)
    mat = torch.rand(n, 3, 3, device=dev, generator=g)
    mat = mat / mat.sum(-1, keepdim=True)
    eye = torch.eye(3, device=dev).expand(n, 3, 3)
    m = eye * (1 - mix) + mat * mix
    x = torch.einsum("nij,njhw->nihw", m, x).clamp(0, 1)
    pix = torch.rand(n, device=dev, generator=g)
    for k, (lo, hi) in ((2, (0.0, 0.15)), (4, (0.15, 0.3))):
        sel = (pix >= lo) & (pix < hi)
        if sel.any():
            x[sel] = F.interpolate(F.avg_pool2d(x[sel], k), scale_factor=k, mode="nearest")
    post = torch.rand(n, device=dev, generator=g) < 0.2
    if post.any():
        x[post] = torch.round(x[post] * 3) / 3
    return x * 2 - 1


def main() -> None:
    from diffusers import AutoencoderKL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="pipeline folder whose vae/ is fine-tuned")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the new vae/ into")
    parser.add_argument("--scenes", type=int, default=60000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--anchor", type=float, default=4.0, help="weight of keeping world latents in place")
    parser.add_argument("--seed", type=int, default=77)
    parser.add_argument("--workers", type=int, default=15)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.time()
    chunk = 2000
    tasks = [(args.seed * 1000 + i, min(chunk, args.scenes - i * chunk)) for i in range((args.scenes + chunk - 1) // chunk)]
    with Pool(args.workers) as pool:
        parts = pool.map(_render_chunk, tasks)
    worlds = torch.from_numpy(np.concatenate([p[0] for p in parts])).to(dev).permute(0, 3, 1, 2)
    masks = torch.from_numpy(np.concatenate([p[1] for p in parts])).to(dev)[:, None]
    print(f"rendered {len(worlds)} scenes in {time.time() - started:.0f} s", flush=True)

    vae = AutoencoderKL.from_pretrained(str(args.model / "vae"), torch_dtype=torch.float32).to(dev)
    frozen = copy.deepcopy(vae).eval().requires_grad_(False)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator(device=dev).manual_seed(args.seed)
    half = args.batch // 2
    for step in range(args.steps):
        idx = torch.randint(0, len(worlds), (args.batch,), device=dev, generator=g)
        world = worlds[idx[:half]].float() / 127.5 - 1
        wide = recolour(masks[idx[half:]].float() / 255, g)
        x = torch.cat([world, wide])
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample(generator=g)).sample
        loss_rec = F.mse_loss(recon, x) + 0.1 * F.l1_loss(recon, x)
        with torch.no_grad():
            target = frozen.encode(world).latent_dist.mean
        loss_anchor = F.mse_loss(dist.mean[:half], target)
        loss = loss_rec + args.anchor * loss_anchor + 1e-6 * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step + 1}/{args.steps} recon {loss_rec.item():.5f} anchor {loss_anchor.item():.5f}", flush=True)
    vae = vae.eval().half()
    args.out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(str(args.out / "vae"), safe_serialization=True)
    print(f"saved {args.out / 'vae'} after {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
