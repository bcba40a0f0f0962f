"""Train the built-in base model from scratch on the procedural shapes world.

Two phases with accelerate: (1) the AutoencoderKL learns to reconstruct 64 px
renders; (2) with the VAE frozen, the UNet and the CLIP text encoder learn to
denoise latents conditioned on captions (epsilon objective, min-SNR-5 weighting,
10% empty captions for classifier-free guidance, EMA weights). The result is a
plain diffusers StableDiffusionPipeline folder in fp16 safetensors.

    python train_scripts/build_tokenizer.py lora_diffusion/builtin/model/tokenizer
    accelerate launch train_scripts/train_base.py --out lora_diffusion/builtin/model

Reproducible from --seed on the same hardware and software.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lora_diffusion.models.builtin import BUILTIN_MARKER, SCHEDULER_CONFIG, build_untrained, builtin_path
from lora_diffusion.models.portable_save import save_pipeline as save_portable
from lora_diffusion.world.scenes import caption, render, sample_scene


def _render_chunk(task: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    seed, count, resolution = task
    rng = random.Random(seed)
    images, captions = np.empty((count, resolution, resolution, 3), dtype=np.uint8), []
    for i in range(count):
        scene = sample_scene(rng)
        scene.show_background = rng.random() < 0.9
        images[i] = np.asarray(render(scene, resolution))
        captions.append(caption(scene))
    return images, captions


class SceneBank:
    """A fixed, seeded set of rendered scenes held on the training device.

    Rendering is CPU work; doing it once up front (all cores) and sampling batches
    from device memory keeps the GPU busy instead of waiting for data loaders.
    """

    def __init__(self, n: int, seed: int, tokenizer, device, workers: int, resolution: int = 64, chunk: int = 2000):
        from multiprocessing import Pool

        tasks = [(seed * 1_000_003 + i, min(chunk, n - i * chunk), resolution) for i in range((n + chunk - 1) // chunk)]
        with Pool(workers) as pool:
            parts = pool.map(_render_chunk, tasks)
        self.images = torch.from_numpy(np.concatenate([p[0] for p in parts])).to(device)  # uint8 NHWC
        captions = [c for p in parts for c in p[1]]
        tokens = tokenizer(captions + [""], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        self.ids = tokens.input_ids[:-1].to(device)
        self.empty_ids = tokens.input_ids[-1].to(device)
        self.n = len(captions)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def pixels(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index].permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def sample(self, batch: int, caption_dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(0, self.n, (batch,), device=self.images.device, generator=self.generator)
        ids = self.ids[index]
        if caption_dropout:
            drop = torch.rand(batch, device=ids.device, generator=self.generator) < caption_dropout
            ids = torch.where(drop[:, None], self.empty_ids[None], ids)
        return index, ids


def cosine_with_warmup(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    # one fused kernel instead of one launch per tensor: ~10x cheaper per step
    torch._foreach_lerp_(list(ema.parameters()), [p.detach().float() for p in model.parameters()], 1 - decay)


def train_vae(accelerator, vae, bank: SceneBank, steps: int, batch: int, lr: float, log) -> None:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae, optimizer = accelerator.prepare(vae, optimizer)
    vae.train()
    start = time.time()
    for step in range(steps):
        pixels = bank.pixels(bank.sample(batch)[0])
        for group in optimizer.param_groups:
            group["lr"] = lr * cosine_with_warmup(step, steps, 100)
        with accelerator.autocast():
            posterior = accelerator.unwrap_model(vae).encode(pixels).latent_dist
            recon = accelerator.unwrap_model(vae).decode(posterior.sample()).sample
            loss = F.mse_loss(recon.float(), pixels) + 0.1 * F.l1_loss(recon.float(), pixels) + 1e-6 * posterior.kl().mean()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 250 == 0 or step == steps - 1:
            log(f"vae step {step + 1}/{steps} loss {loss.item():.5f} ({(step + 1) / (time.time() - start):.1f} it/s)")


@torch.no_grad()
def encode_bank(vae, bank: SceneBank, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every banked image (latents are sampled from them per step)."""
    means, stds = [], []
    for start in range(0, bank.n, batch):
        dist = vae.encode(bank.pixels(torch.arange(start, min(bank.n, start + batch), device=bank.images.device))).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def train_denoiser(accelerator, vae, unet, text_encoder, bank: SceneBank, args, log):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    alphas = scheduler.alphas_cumprod.to(accelerator.device)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema_unet, ema_te = copy.deepcopy(unet).float().eval(), copy.deepcopy(text_encoder).float().eval()
    unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    ema_unet.to(accelerator.device)
    ema_te.to(accelerator.device)
    vae.to(accelerator.device).eval().requires_grad_(False)
    scaling = vae.config.scaling_factor
    latent_mean, latent_std = encode_bank(vae, bank)
    log(f"encoded {bank.n} images to latents")
    unet.train()
    text_encoder.train()
    start = time.time()
    for step in range(args.unet_steps):
        if args.stop_at_step and step >= args.stop_at_step:
            log(f"stopping at step {step} of the {args.unet_steps}-step schedule (--stop-at-step)")
            break
        if args.max_minutes and time.time() - args.started > 60 * args.max_minutes:
            log(f"stopping early at step {step} of {args.unet_steps}: --max-minutes {args.max_minutes} reached")
            break
        index, ids = bank.sample(args.batch_size, caption_dropout=0.1)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * cosine_with_warmup(step, args.unet_steps, 500)
        latents = (latent_mean[index] + latent_std[index] * torch.randn_like(latent_mean[index])) * scaling
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
        noisy = scheduler.add_noise(latents, noise, t)
        snr = alphas[t] / (1 - alphas[t])
        weight = torch.clamp(snr, max=5.0) / snr  # min-SNR-γ for epsilon prediction
        with accelerator.autocast():
            context = text_encoder(ids).last_hidden_state
            pred = unet(noisy, t, context).sample
        loss = (F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        ema_update(ema_unet, accelerator.unwrap_model(unet), decay)
        ema_update(ema_te, accelerator.unwrap_model(text_encoder), decay)
        if step % 500 == 0 or step == args.unet_steps - 1:
            log(f"unet step {step + 1}/{args.unet_steps} loss {loss.item():.5f} ({(step + 1) / (time.time() - start):.1f} it/s)")
    return ema_unet, ema_te


def save_pipeline(out: Path, vae, unet, text_encoder, tokenizer_dir: Path) -> None:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DPMSolverMultistepScheduler(**SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to("cpu", torch.float16)
    save_portable(pipe, out)
    config_path = out / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config[BUILTIN_MARKER] = True  # lets loaders and adapter files tell the built-in base apart
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    # weights are stored in fp16 to keep the package small; transformers 5 loads in the
    # stored dtype by default, so say float32 here: a plain from_pretrained then runs on CPU
    te_config_path = out / "text_encoder" / "config.json"
    te_config = json.loads(te_config_path.read_text())
    te_config["dtype"] = "float32"
    te_config_path.write_text(json.dumps(te_config, indent=2, sort_keys=True))
    # ship the tokenizer as vocab.json + merges.txt (what SD folders hold, readable by every
    # transformers version); transformers 5 would write only its 2 MB tokenizer.json
    shutil.rmtree(out / "tokenizer")
    shutil.copytree(tokenizer_dir, out / "tokenizer")


def main() -> None:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import CLIPTokenizer

    parser = argparse.ArgumentParser(description="Train the built-in base model from scratch.")
    parser.add_argument("--out", type=Path, default=builtin_path())
    parser.add_argument("--tokenizer", type=Path, default=builtin_path() / "tokenizer")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--vae-batch", type=int, default=64)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--vae-from", type=Path, default=None, help="reuse a trained VAE folder and skip phase 1")
    parser.add_argument("--unet-steps", type=int, default=12000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--workers", type=int, default=8, help="processes that render the scene bank")
    parser.add_argument("--scenes", type=int, default=300_000, help="rendered scenes to train on")
    # fp32 with TF32 matmuls measured faster than bf16 autocast for this small model (H100)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--stop-at-step", type=int, default=0, help="end the UNet phase at this step (0: run the schedule)")
    parser.add_argument("--max-minutes", type=float, default=0, help="stop the UNet phase after this long (0: never)")
    parser.add_argument("--log", type=Path, default=None, help="also append log lines to this file")
    args = parser.parse_args()

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True

    def log(message: str) -> None:
        if accelerator.is_main_process:
            print(message, flush=True)
            if args.log:
                with open(args.log, "a") as f:
                    f.write(message + "\n")

    tokenizer = CLIPTokenizer.from_pretrained(str(args.tokenizer))
    vae, unet, text_encoder = build_untrained(args.seed)

    started = args.started = time.time()
    bank = SceneBank(args.scenes, args.seed + accelerator.process_index, tokenizer, accelerator.device, args.workers)
    log(f"rendered {bank.n} scenes in {time.time() - started:.0f} s")
    if args.vae_from:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(args.vae_from), torch_dtype=torch.float32).to(accelerator.device)
        vae.eval().requires_grad_(False)
        log(f"vae loaded from {args.vae_from} (phase 1 skipped); scaling factor {vae.config.scaling_factor:.4f}")
    else:
        train_vae(accelerator, vae, bank, args.vae_steps, args.vae_batch, args.vae_lr, log)
        vae = accelerator.unwrap_model(vae).float().eval().requires_grad_(False)
        with torch.no_grad():
            latents = vae.encode(bank.pixels(bank.sample(1024)[0])).latent_dist.sample()
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
        log(f"vae done in {time.time() - started:.0f} s; latent std {latents.std().item():.4f}")

    ema_unet, ema_te = train_denoiser(accelerator, vae, unet, text_encoder, bank, args, log)
    if accelerator.is_main_process:
        save_pipeline(args.out, vae, ema_unet, ema_te, args.tokenizer)
        log(f"saved {args.out} after {time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
