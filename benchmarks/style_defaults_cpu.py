"""Train each example style folder with the simplest command and measure what the user sees.

    python3 benchmarks/style_defaults_cpu.py                      # every folder in examples/styles
    python3 benchmarks/style_defaults_cpu.py --styles sepia ink --train-args "--steps 400"
    python3 benchmarks/style_defaults_cpu.py --compare-args "--lr 0.001 --steps 800"   # side by side

For each folder: `lora-diffusion train --data examples/styles/STYLE --output ...` in a fresh
process (wall time from process start to the file written, and the trainer's own time to the first
step), then the same held-out prompts generated at LoRA weight 0 and 1 (seed 0, 20 steps, CFG 5)
and the style score of each (``lora_diffusion.world.styles``). With ``--compare-args`` every folder
is trained a second time with those flags and its gain is shown beside. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train_once(style: str, out: Path, extra: list[str]) -> dict:
    command = ["lora-diffusion", "train", "--data", str(REPO / "examples" / "styles" / style),
               "--output", str(out), *extra]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - started
    if done.returncode != 0:
        sys.exit(f"{style}: training failed: {done.stderr.strip().splitlines()[-1]}")
    log = done.stderr.replace("\r", "\n")
    first = re.search(r"first step (\d+) s after start", log)
    steps = re.search(r"\bsteps = (\d+)", log) or re.search(r"after (\d+) steps", done.stdout)
    return {"wall": wall, "first_step": float(first.group(1)) if first else float("nan"),
            "steps": int(steps.group(1)) if steps else 0}


def style_scores(adapter: Path, style: str, prompts: list[str]) -> tuple[float, float]:
    import numpy as np
    import torch

    from lora_diffusion import load_adapter, lora_layers, pipeline_components, set_adapter_weight
    from lora_diffusion.models.loading import load_pipeline
    from lora_diffusion.world.styles import style_score

    pipe = load_pipeline("builtin")
    components = pipeline_components(pipe)
    name = load_adapter(adapter, components)
    scores = []
    trained = [m for m in components.values() if any(name in layer.rank for layer in lora_layers(m).values())]
    for weight in (0.0, 1.0):
        for model in trained:
            set_adapter_weight(model, name, weight)
        images = pipe(prompts, num_inference_steps=20, guidance_scale=5.0, height=64, width=64,
                      generator=torch.Generator().manual_seed(0)).images
        scores.append(float(np.mean([style_score(style, im) for im in images])))
    return scores[0], scores[1]


def main() -> None:
    from lora_diffusion.world.quality import held_out_scenes
    from lora_diffusion.world.scenes import caption
    from lora_diffusion.world.styles import STYLES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    parser.add_argument("--prompts", type=int, default=48, help="held-out prompts per weight")
    parser.add_argument("--train-args", default="", help="extra flags for lora-diffusion train")
    parser.add_argument("--compare-args", default="", help="flags of a second run per folder, shown beside")
    parser.add_argument("--out", default="", help="folder for the adapters (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="style-defaults-"))
    out.mkdir(parents=True, exist_ok=True)
    prompts = [caption(s) for s in held_out_scenes(args.prompts)]
    command = "lora-diffusion train --data examples/styles/STYLE --output STYLE.safetensors " + args.train_args
    rows = []
    for style in args.styles:
        adapter = out / f"{style}.safetensors"
        run = train_once(style, adapter, shlex.split(args.train_args))
        before, after = style_scores(adapter, style, prompts)
        other = None
        if args.compare_args:
            train_once(style, out / f"{style}-compare.safetensors", shlex.split(args.compare_args))
            other = style_scores(out / f"{style}-compare.safetensors", style, prompts)
        rows.append((style, run, before, after, other))
        print(f"{style}: {run['steps']} steps, wall {run['wall']:.0f} s (first step {run['first_step']:.0f} s), "
              f"style score {before:.3f} -> {after:.3f} (gain {after - before:+.3f})"
              + (f"; compared run gain {other[1] - other[0]:+.3f}" if other else ""), flush=True)
    print(f"\n`{command.strip()}` ({len(prompts)} held-out prompts, seed 0, 20 steps, CFG 5)"
          + (f"; compared: `{args.compare_args}`" if args.compare_args else "") + "\n")
    extra = " compared run's gain |" if args.compare_args else ""
    print("| style | steps | wall (start → file) | first step after | score at weight 0 | at weight 1 | gain |" + extra)
    print("|---|---|---|---|---|---|---|" + ("---|" if extra else ""))
    for style, run, before, after, other in rows:
        print(f"| {style} | {run['steps']} | {run['wall']:.0f} s | {run['first_step']:.0f} s | {before:.3f} | "
              f"{after:.3f} | {after - before:+.3f} |" + (f" {other[1] - other[0]:+.3f} |" if other else ""))


if __name__ == "__main__":
    main()
