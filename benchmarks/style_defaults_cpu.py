"""Train style LoRAs with the simplest command and measure what the user sees: style, content, weights, mixing.

    python3 benchmarks/style_defaults_cpu.py                          # every style, derived defaults
    python3 benchmarks/style_defaults_cpu.py --styles sepia ink --train-args "--steps 400" --prompts 24
    python3 benchmarks/style_defaults_cpu.py --out runs/base --reuse  # measure adapters already trained there

Styles: the four example folders (``examples/styles/``) and the held-out looks (``world.styles.HELD_OUT_STYLES``,
24 images written to OUT/data/ the way ``examples/make_style_folders.py`` writes the examples) that no default
was tuned on. Each is trained by ``lora-diffusion train --data DIR --output OUT/STYLE.safetensors`` in a fresh
process (wall time from process start to the file written; the trainer's time to its first step), then:

- the **drawable style**: the training images' style score after a round trip through the base's VAE (what any
  LoRA on this base can reach, ``shared/MEASURED.md``);
- **style gain** at weights 0.25/0.5/0.75/1: score minus the base's (weight 0) on the same held-out prompts and
  seed, and weight 1's gain as a share of the drawable gain (drawable score minus the base's);
- **content kept** at weight 1 (``world.content``): the prompted shape read back, the object where the base
  drew it, variety across prompts;
- **mixing**: each pair of styles at 0.7 each; each style's gain in the mix as a share of its gain alone at 0.7.

Prints one Markdown table per measure and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = (0.25, 0.5, 0.75, 1.0)
MIX_WEIGHT = 0.7
IMAGES_PER_FOLDER = 24  # as examples/make_style_folders.py


def style_folder(style: str, out: Path) -> Path:
    """The example folder, or the held-out look's folder written under OUT/data (same scene sampler)."""
    from lora_diffusion.world.scenes import caption, sample_scene
    from lora_diffusion.world.styles import ALL_STYLES, stylize

    example = REPO / "examples" / "styles" / style
    if example.is_dir():
        return example
    folder = out / "data" / style
    if not folder.is_dir():
        folder.mkdir(parents=True)
        rng = random.Random(9000 + ALL_STYLES.index(style))
        for i in range(IMAGES_PER_FOLDER):
            scene = sample_scene(rng)
            stylize(style, scene).save(folder / f"{i:03d}.png")
            (folder / f"{i:03d}.txt").write_text(caption(scene) + "\n")
    return folder


def train_once(data: Path, adapter: Path, extra: list[str]) -> dict:
    command = ["lora-diffusion", "train", "--data", str(data), "--output", str(adapter), *extra]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - started
    if done.returncode != 0:
        sys.exit(f"{data.name}: training failed: {done.stderr.strip().splitlines()[-1]}")
    log = done.stderr.replace("\r", "\n")
    first = re.search(r"first step (?:(\d+) min )?(\d+) s after start", log)
    steps = re.search(r"\bsteps = (\d+)", log) or re.search(r"after (\d+) steps", done.stdout)
    return {"wall": wall, "first_step": 60.0 * int(first.group(1) or 0) + int(first.group(2)) if first else None,
            "steps": int(steps.group(1)) if steps else 0}


def drawable_score(pipe, style: str, folder: Path) -> float:
    """Mean style score of the folder's images after an encode → decode round trip through the base's VAE."""
    import numpy as np
    import torch
    from PIL import Image

    from lora_diffusion.world.styles import style_score

    images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]
    pixels = pipe.image_processor.preprocess(images)
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean
        decoded = pipe.image_processor.postprocess(pipe.vae.decode(latents).sample, output_type="pil")
    return float(np.mean([style_score(style, im) for im in decoded]))


class Generator:
    """One pipeline with every adapter loaded; draws the held-out prompts at any weight per adapter."""

    def __init__(self, prompts: list[str]):
        from lora_diffusion import pipeline_components
        from lora_diffusion.models.loading import load_pipeline

        self.pipe = load_pipeline("builtin")
        self.components = pipeline_components(self.pipe)
        self.prompts = prompts
        self.names: dict[str, str] = {}

    def load(self, style: str, adapter: Path) -> None:
        from lora_diffusion import load_adapter

        self.names[style] = load_adapter(adapter, self.components, name=style, weight=0.0)

    def draw(self, weights: dict[str, float]):
        import torch

        from lora_diffusion import set_adapter_weight
        from lora_diffusion.lora.inject import lora_layers

        for style, name in self.names.items():
            for model in self.components.values():
                if any(name in layer.rank for layer in lora_layers(model).values()):
                    set_adapter_weight(model, name, weights.get(style, 0.0))
        return self.pipe(self.prompts, num_inference_steps=20, guidance_scale=5.0, height=64, width=64,
                         generator=torch.Generator().manual_seed(0)).images


def measure(args: argparse.Namespace, out: Path, runs: dict) -> dict:
    import numpy as np

    from lora_diffusion.world.content import content_kept
    from lora_diffusion.world.quality import held_out_scenes
    from lora_diffusion.world.scenes import caption
    from lora_diffusion.world.styles import style_score

    scenes = held_out_scenes(args.prompts)
    gen = Generator([caption(s) for s in scenes])
    for style in args.styles:
        gen.load(style, out / f"{style}.safetensors")
    base = gen.draw({})
    score = {style: (lambda images, s=style: float(np.mean([style_score(s, im) for im in images]))) for style in args.styles}
    results = {}
    for style in args.styles:
        row = dict(runs.get(style, {}))
        row["base"] = score[style](base)
        row["drawable"] = drawable_score(gen.pipe, style, style_folder(style, out))
        row["scores"] = {}
        for weight in WEIGHTS + (MIX_WEIGHT,):
            images = gen.draw({style: weight})
            row["scores"][str(weight)] = score[style](images)
            if weight == 1.0:
                row["content"] = content_kept(style, scenes, base, images).__dict__
        results[style] = row
        print(f"{style}: {json.dumps(row)}", flush=True)
    mixes = {}
    for a, b in itertools.combinations(args.styles, 2):
        images = gen.draw({a: MIX_WEIGHT, b: MIX_WEIGHT})
        mixes[f"{a}+{b}"] = {a: score[a](images), b: score[b](images)}
        print(f"mix {a}+{b}: {mixes[f'{a}+{b}']}", flush=True)
    return {"styles": results, "mixes": mixes}


def gain(row: dict, weight: float) -> float:
    return row["scores"][str(weight)] - row["base"]


def report(results: dict, command: str, prompts: int) -> None:
    styles = results["styles"]
    print(f"\n`{command}`; {prompts} held-out prompts, seed 0, 20 steps, CFG 5\n")
    print("| style | steps | wall | first step | base | drawable | gain at 0.25 / 0.5 / 0.75 / 1 | weight 1 of drawable "
          "| weight 0.5 of weight 1 | shape read (restyled base) | object in place | variety |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for style, row in styles.items():
        gains = " / ".join(f"{gain(row, w):+.3f}" for w in WEIGHTS)
        drawable = row["drawable"] - row["base"]
        share = gain(row, 1.0) / drawable if drawable > 0 else float("nan")
        half = gain(row, 0.5) / gain(row, 1.0) if gain(row, 1.0) > 0 else float("nan")
        c = row["content"]
        wall = f"{row['wall']:.0f} s" if "wall" in row else "–"
        first = f"{row['first_step']:.0f} s" if row.get("first_step") is not None else "–"
        print(f"| {style} | {row.get('steps', '–')} | {wall} | {first} | {row['base']:.3f} | {row['drawable']:.3f} | "
              f"{gains} | {100 * share:.0f}% | {100 * half:.0f}% | {100 * c['shape']:.0f}% ({100 * c['shape_possible']:.0f}%) "
              f"| {100 * c['position']:.0f}% | {c['variety']:.2f}× |")
    print(f"\nMixes at {MIX_WEIGHT} each: each style's gain in the mix / its gain alone at {MIX_WEIGHT}\n")
    print("| mix | first style kept | second style kept |")
    print("|---|---|---|")
    for pair, scores in results["mixes"].items():
        kept = []
        for style, value in scores.items():
            alone = gain(styles[style], MIX_WEIGHT)
            kept.append(f"{style} {100 * (value - styles[style]['base']) / alone:.0f}%" if alone > 0 else f"{style} –")
        print(f"| {pair} | {kept[0]} | {kept[1]} |")


def main() -> None:
    from lora_diffusion.world.styles import ALL_STYLES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", nargs="+", default=list(ALL_STYLES), choices=ALL_STYLES)
    parser.add_argument("--prompts", type=int, default=48, help="held-out prompts per weight")
    parser.add_argument("--train-args", default="", help="extra flags for lora-diffusion train")
    parser.add_argument("--out", default="", help="folder for the adapters and results (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="measure adapters already in --out instead of training")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="style-defaults-"))
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for style in args.styles:
        adapter = out / f"{style}.safetensors"
        if args.reuse and adapter.exists():
            continue
        runs[style] = train_once(style_folder(style, out), adapter, shlex.split(args.train_args))
        print(f"{style}: trained {runs[style]}", flush=True)
    results = measure(args, out, runs)
    results["train_args"] = args.train_args
    (out / "results.json").write_text(json.dumps(results, indent=1))
    report(results, f"lora-diffusion train --data DIR --output STYLE.safetensors {args.train_args}".strip(), args.prompts)


if __name__ == "__main__":
    main()
