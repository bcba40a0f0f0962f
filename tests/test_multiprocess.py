"""Data-parallel training in two real processes (torchrun, gloo on the CPU) against one process at twice
the batch: the ranks split each global batch, draw its noise alike and average gradients, and only rank 0
writes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(launcher: list[str], args: list[str], out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, *launcher, str(ROOT / "train_scripts" / "train_lora.py"), *args, "--output", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow  # two training processes over gloo
def test_two_processes_at_batch_2_train_what_one_process_trains_at_batch_4(tiny_base, tmp_path):
    data = ROOT / "examples" / "styles" / "sepia"  # 24 images: 6 global batches of 4 per epoch
    args = ["--base", tiny_base, "--data", str(data), "--resolution", "32", "--steps", "2", "--lr", "5e-3", "--seed",
            "2", "--rank", "4", "--caption-dropout", "0", "--checkpoint-every", "0", "--save-every", "1", "--quiet"]
    one = _run([], [*args, "--batch-size", "4"], tmp_path / "one" / "a.safetensors")
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    two = _run(torchrun, [*args, "--batch-size", "2"], tmp_path / "two" / "a.safetensors")
    assert two.returncode == 0, two.stderr[-2000:]
    assert "data-parallel on 2 processes (cpu)" in two.stderr
    # rank 0 alone writes: one adapter, one log with one line per step, one "wrote" line
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["a-logs", "a-step000001.safetensors", "a.safetensors"]
    assert two.stdout.count("wrote ") == 1
    logs = {name: [json.loads(line)["loss"] for line in (tmp_path / name / "a-logs" / "train_log.jsonl").open()]
            for name in ("one", "two")}
    assert len(logs["two"]) == 2
    # step 1: the mean over the same 4 images with the same noise; step 2: after the same averaged update
    torch.testing.assert_close(torch.tensor(logs["two"]), torch.tensor(logs["one"]), rtol=1e-5, atol=0)
    # the adapter after the first update agrees to fp16 rounding; later Adam steps divide gradients near
    # zero by their own magnitude, so summation-order noise grows there and only the losses are compared
    a = load_file(str(tmp_path / "one" / "a-step000001.safetensors"))
    b = load_file(str(tmp_path / "two" / "a-step000001.safetensors"))
    assert a.keys() == b.keys() and any(a[k].abs().sum() > 0 for k in a if k.endswith("lora_up.weight"))
    for key in a:
        assert float((a[key].float() - b[key].float()).norm()) <= 1e-3 * float(a[key].float().norm()) + 1e-7, key


@pytest.mark.slow  # two "machines" over gloo
def test_two_machines_with_the_multi_node_config_train_what_one_process_trains(tiny_base, tmp_path):
    """configs/accelerate/multi-node.yaml as README says to use it, one launch per machine (node ranks 0 and 1, one
    process each, on this host over gloo): the same losses as one process at the global batch, one writer."""
    data = ROOT / "examples" / "styles" / "sepia"
    args = ["--base", tiny_base, "--data", str(data), "--resolution", "32", "--steps", "2", "--lr", "5e-3", "--seed",
            "2", "--rank", "4", "--caption-dropout", "0", "--checkpoint-every", "0", "--quiet"]
    one = _run([], [*args, "--batch-size", "4"], tmp_path / "one" / "a.safetensors")
    assert one.returncode == 0, one.stderr[-2000:]
    port = str(_free_port())
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    machines = [subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(ROOT / "configs" / "accelerate" / "multi-node.yaml"), "--machine_rank", str(rank), "--num_processes", "2",
         "--main_process_ip", "127.0.0.1", "--main_process_port", port, "--mixed_precision", "no",
         str(ROOT / "train_scripts" / "train_lora.py"), *args, "--batch-size", "2",
         "--output", str(tmp_path / "two" / "a.safetensors")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for rank in (0, 1)]
    outputs = [m.communicate(timeout=600) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "data-parallel on 2 processes (cpu)" in outputs[0][1]
    assert [out.count("wrote ") for out, _ in outputs] == [1, 0]  # machine 0 writes, machine 1 does not
    logs = {name: [json.loads(line)["loss"] for line in (tmp_path / name / "a-logs" / "train_log.jsonl").open()]
            for name in ("one", "two")}
    torch.testing.assert_close(torch.tensor(logs["two"]), torch.tensor(logs["one"]), rtol=1e-5, atol=0)
