"""GPU benchmark: whole `lora-diffusion train` jobs as a user runs them (issue 16), SD1.5-architecture base.

    python benchmarks/job_sd15_gpu.py --jobs 400x1 1500x1 400x4 1500x4 --uncached 8

Each job is a fresh process, `python -m lora_diffusion train --base sd15-random --data data --output ...
--steps N --batch-size B --rank 4 --alpha 4`, every other setting derived (bf16, CUDA graphs on one GPU), its
console going to a file. Reported: wall time from process start to exit (the file is written before exit), time
to the first step as the trainer's log reports it (from its package import; else when the step log appears),
the log's start-up breakdown, steady steps/s (median step gap over the second half of the
log), and peak GPU memory (the trainer's own report). `--uncached B` adds a `--crop random --flip` job at
batch B (no latent caching possible: pixels are prefetched and encoded every step).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_job(base: Path, data: Path, out: Path, steps: int, batch: int, extra: list[str], env: dict[str, str]) -> dict:
    output = out / f"job-{steps}x{batch}{'-'.join([''] + [e.strip('-') for e in extra])}.safetensors"
    log = output.with_name(f"{output.stem}-logs") / "train_log.jsonl"
    cmd = [sys.executable, "-m", "lora_diffusion", "train", "--base", str(base), "--data", str(data),
           "--output", str(output), "--steps", str(steps), "--batch-size", str(batch), "--rank", "4", "--alpha", "4",
           *extra]
    started = time.perf_counter()
    # the log's lines (the plan, the start-up breakdown, the final report, the progress bar) go to a file:
    # a pipe nobody reads until the end fills up on a long job and stalls it
    console = output.with_suffix(".console.txt")
    console.parent.mkdir(parents=True, exist_ok=True)
    with console.open("w") as sink:
        process = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, text=True, env=os.environ | env)
        first = None
        while process.poll() is None:
            if first is None and log.exists() and log.stat().st_size > 0:
                first = time.perf_counter() - started
            time.sleep(0.02)
    wall = time.perf_counter() - started
    text = console.read_text()
    if process.returncode != 0 or not output.exists():
        raise SystemExit(f"job failed ({process.returncode}):\n{text[-3000:]}")
    times = [json.loads(line)["time"] for line in log.read_text().splitlines()]
    gaps = [b - a for a, b in zip(times[len(times) // 2:], times[len(times) // 2 + 1:])]
    peak = re.search(r"peak GPU memory ([\d.]+) GiB", text)
    # the trainer's own clock, from the process's start (the log file's appearance lags by a poll)
    reported = re.search(r"first step ([\d.]+) s after start\)", text)
    breakdown = re.search(r"first step [\d.]+ s after start: (.*)", text)
    label = " ".join([*extra, *(f"{k}={v}" for k, v in env.items())])
    return {"job": f"{steps} steps, batch {batch}" + (" " + label if label else ""), "wall": wall,
            "first": float(reported.group(1)) if reported else first, "steps_s": 1 / statistics.median(gaps),
            "img_s": batch / statistics.median(gaps), "peak": float(peak.group(1)) if peak else float("nan"),
            "breakdown": breakdown.group(1) if breakdown else ""}


def main() -> None:
    from sd15_setup import prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/sd15bench"))
    parser.add_argument("--jobs", nargs="+", default=["400x1", "1500x1", "400x4", "1500x4"])
    parser.add_argument("--uncached", type=int, nargs="*", default=[8])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--drop-caches", action="store_true",
                        help="empty the page cache before each job (as root): a first run after a reboot")
    parser.add_argument("--repeat", type=int, default=1, help="run each job this often, variants in rotating order")
    parser.add_argument("--flags", default="", help='CLI flags for every job, e.g. "--compile --compile-mode reduce-overhead"')
    parser.add_argument("--variants", nargs="+", default=[""], metavar="K=V[,K=V]",
                        help="environment variants, each job runs under each ('' = as is), e.g. LORA_DIFFUSION_STARTUP=plain")
    args = parser.parse_args()
    setup = time.time()
    base, data = prepare(args.work, args.images)
    print(f"setup {time.time() - setup:.0f} s (not part of any job)", flush=True)
    print("| job | wall (start → exit) | first step after | steady steps/s | img/s | peak GiB |")
    print("|---|---|---|---|---|---|", flush=True)
    flags = args.flags.split()
    runs = [(int(s), int(b), flags) for s, b in (job.split("x") for job in args.jobs)]
    runs += [(200, b, ["--crop", "random", "--flip", *flags]) for b in args.uncached]
    variants = [dict(kv.split("=", 1) for kv in v.split(",") if kv) for v in args.variants]
    breakdowns, results = [], {}
    for n, (steps, batch, extra) in enumerate(runs):
        for env in [v for r in range(args.repeat) for v in variants[r % len(variants):] + variants[:r % len(variants)]]:
            if args.drop_caches:
                subprocess.run("sync && echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)
            # a folder per job: a repeated job must not find the last one's log (or append to it)
            r = run_job(base, data, args.work / "jobs" / f"{time.time_ns()}-{n}", steps, batch, extra, env)
            print(f"| {r['job']} | {r['wall']:.1f} s | {r['first']:.1f} s | {r['steps_s']:.1f} | {r['img_s']:.1f} | "
                  f"{r['peak']:.2f} |", flush=True)
            breakdowns.append(f"{r['job']}: {r['breakdown']}")
            results.setdefault(r["job"], []).append(r)
    if args.repeat > 1:
        print("\n| job | runs | wall median (min) | first step median (min) |\n|---|---|---|---|")
        for job, rs in results.items():
            walls, firsts = [r["wall"] for r in rs], [r["first"] for r in rs]
            print(f"| {job} | {len(rs)} | {statistics.median(walls):.1f} s ({min(walls):.1f}) | "
                  f"{statistics.median(firsts):.1f} s ({min(firsts):.1f}) |")
    print("\nstart-up, as each job's log reports it:\n" + "\n".join(breakdowns))


if __name__ == "__main__":
    main()
