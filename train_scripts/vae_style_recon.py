"""How well a pipeline's VAE reconstructs the example style folders (style score before → after)."""

import glob
import sys

import numpy as np
import torch
from PIL import Image

from lora_diffusion.world.styles import STYLES, style_score


def main() -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
    for style in STYLES:
        files = sorted(glob.glob(f"examples/styles/{style}/*.png"))
        x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), np.float32) / 127.5 - 1).permute(2, 0, 1) for f in files])
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mean).sample
        images = [Image.fromarray(((t.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()) for t in y]
        before = np.mean([style_score(style, Image.open(f)) for f in files])
        after = np.mean([style_score(style, im) for im in images])
        print(f"{style}: style score of folder {before:.3f}, of its VAE reconstruction {after:.3f}")


if __name__ == "__main__":
    main()
