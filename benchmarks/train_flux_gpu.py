"""GPU benchmark: this project's trainer on a FLUX.1-dev- (or SD3.5-Large-) architecture pipeline (random weights,
no download), side by side with diffusers' ``examples/dreambooth/train_dreambooth_lora_flux.py`` (``…_sd3.py``) at
the same settings.

    python benchmarks/train_flux_gpu.py --variants peer default nf4-gc
    python benchmarks/train_flux_gpu.py --family sd3 --variants peer default nf4-gc

Each variant runs in a process of its own (its peak memory its own): 1024 px, rank 16 (alpha 16) on the attention
projections (the mission's default, given to the peer as ``--lora_layers``), batch 1, bf16, latents and text
states cached, a constant guidance of 1 (FLUX), one caption for all images. Steady state = median gap between optimizer
steps after the first three; peak = ``torch.cuda.max_memory_allocated``; first step and file written are seconds
from the process start (imports, base load, caching and any capture included).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).parent
CAPTION = "a photo of a scene in mystyle"
ATTENTION = "attn.to_k,attn.to_q,attn.to_v,attn.to_out.0,attn.add_k_proj,attn.add_q_proj,attn.add_v_proj,attn.to_add_out"
VARIANTS = {  # this project's settings beyond the shared ones; "derived" leaves batch and everything else to the plan
    "default": {"batch_size": 1},
    "derived": {},
    "bf16-gc": {"batch_size": 1, "gradient_checkpointing": True},
    "int8-gc": {"batch_size": 1, "gradient_checkpointing": True, "base_precision": "int8"},
    "fp8-gc": {"batch_size": 1, "gradient_checkpointing": True, "base_precision": "fp8"},
    "nf4-gc": {"batch_size": 1, "gradient_checkpointing": True, "base_precision": "nf4"},
}
WARM = 3
FAMILIES = {  # setup module, the peer's pipeline class, its script, its extra arguments
    "flux": ("flux_setup", "FluxPipeline", ".peers/train_dreambooth_lora_flux.py", ["--guidance_scale", "1"]),
    "sd3": ("sd3_setup", "StableDiffusion3Pipeline", ".peers/train_dreambooth_lora_sd3.py", []),
}


def summarise(name: str, stamps: list[float], written: float, peak: float, batch: int, losses=()) -> dict:
    gaps = [b - a for a, b in zip(stamps[WARM:], stamps[WARM + 1:])]
    return {"variant": name, "batch": batch, "img_s": batch / statistics.median(gaps), "peak_gib": peak,
            "first_step_s": stamps[0], "file_written_s": written, "steps": len(stamps),
            "loss_last10": statistics.mean(losses[-10:]) if losses else None}


def run_ours(variant: str, base: Path, data: Path, out: Path, steps: int) -> dict:
    import torch

    from lora_diffusion.training.callbacks import TrainCallbacks
    from lora_diffusion.training.config import TrainConfig
    from lora_diffusion.training.trainer import train

    stamps, losses, planned = [], [], {}

    def on_step(record):
        torch.cuda.synchronize()
        stamps.append(time.perf_counter() - STARTED)
        losses.append(record["loss"])

    settings = VARIANTS[variant]
    cfg = TrainConfig(base=str(base), data=str(data), output=str(out / f"{variant}.safetensors"), caption=CAPTION,
                      resolution=1024, steps=steps, rank=16, alpha=16, lr=1e-4, mixed_precision="bf16", seed=0,
                      **settings)
    def on_plan(plan, text):
        planned["batch"] = plan.config.batch_size
        print(text, flush=True)

    train(cfg, progress=False, callbacks=TrainCallbacks(on_plan=on_plan, on_step=on_step))
    batch = planned["batch"]
    return summarise(variant, stamps, time.perf_counter() - STARTED, torch.cuda.max_memory_allocated() / 2**30,
                     batch, losses)


def run_peer(family: str, base: Path, data: Path, out: Path, steps: int, checkpointing: bool) -> dict:
    _, pipeline, script, extra = FAMILIES[family]
    extra = extra + (["--gradient_checkpointing"] if checkpointing else [])
    result = out / "peer.json"
    args = [sys.executable, str(HERE / "peer_timing.py"), str(result), pipeline, script,
            "--pretrained_model_name_or_path", str(base), "--instance_data_dir", str(data),
            "--instance_prompt", CAPTION, "--output_dir", str(out / "peer"), "--resolution", "1024",
            "--train_batch_size", "1", "--rank", "16", "--lora_alpha", "16", "--learning_rate", "1e-4",
            "--mixed_precision", "bf16", "--cache_latents", "--lora_layers", ATTENTION,
            "--max_train_steps", str(steps), "--checkpointing_steps", "100000", "--seed", "0",
            "--lr_scheduler", "constant", "--lr_warmup_steps", "0", *extra]
    started = time.perf_counter()
    subprocess.run(args, check=True)
    r = json.loads(result.read_text())
    offset = time.perf_counter() - started - r["file_written_s"]  # the child's start, from this process's clock
    return summarise("peer-gc" if checkpointing else "peer", [t + offset for t in r["step_times"]],
                     r["file_written_s"] + offset, r["peak_gib"], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fluxbench"))
    parser.add_argument("--variants", nargs="+", default=["peer", "default", "nf4-gc"],
                        choices=["peer", "peer-gc", *VARIANTS])
    parser.add_argument("--family", default="flux", choices=list(FAMILIES))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one variant of ours in this process, print JSON
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import importlib

    base, data = importlib.import_module(FAMILIES[args.family][0]).prepare(args.work, args.images)
    out = args.work / f"runs-{args.family}"
    if not args.one:
        import torch

        print(f"setup {time.perf_counter() - STARTED:.0f} s; {torch.cuda.get_device_name()}, torch {torch.__version__}",
              flush=True)
    out.mkdir(parents=True, exist_ok=True)
    if args.one:
        print("RESULT " + json.dumps(run_ours(args.one, base, data, out, args.steps)), flush=True)
        return
    print("| variant | batch | img/s (steady) | peak GPU GiB | first step (s) | file written (s) | steps | loss (last 10) |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for variant in args.variants:
        if variant.startswith("peer"):
            try:
                r = run_peer(args.family, base, data, out, args.steps, checkpointing=variant == "peer-gc")
            except subprocess.CalledProcessError as error:
                print(f"| {variant} | failed: exit {error.returncode} |", flush=True)
                continue
        else:
            proc = subprocess.run([sys.executable, __file__, "--one", variant, "--work", str(args.work),
                                   "--family", args.family,
                                   "--steps", str(args.steps), "--images", str(args.images)],
                                  capture_output=True, text=True)
            rows = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            sys.stderr.write("".join(f"  {variant}: {line}\n" for line in proc.stdout.splitlines()
                                     if not line.startswith("RESULT ")))
            if not rows:
                print(f"| {variant} | failed: {proc.stderr.strip().splitlines()[-1:]} |", flush=True)
                sys.stderr.write(proc.stderr[-3000:])
                continue
            r = json.loads(rows[0])
            # a child's clock starts at its own process start, which is what a user waits from
        loss = "" if r.get("loss_last10") is None else f"{r['loss_last10']:.4f}"
        print(f"| {r['variant']} | {r['batch']} | {r['img_s']:.3f} | {r['peak_gib']:.2f} | {r['first_step_s']:.0f} | "
              f"{r['file_written_s']:.0f} | {r['steps']} | {loss} |", flush=True)


if __name__ == "__main__":
    main()
