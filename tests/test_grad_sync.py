"""Gradients averaged across two real processes (gloo on the CPU), as the multi-GPU CUDA-graph path does."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lora_diffusion.training.grad_sync import average_gradients


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        a = torch.nn.Parameter(torch.zeros(2, 3))
        b = torch.nn.Parameter(torch.zeros(4))
        frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # no gradient: left alone
        a.grad = torch.full((2, 3), float(rank + 1))
        b.grad = torch.arange(4.0) * (10 if rank else 30)
        average_gradients([a, b, frozen], 2)
        results[rank] = (a.grad.clone(), b.grad.clone(), frozen.grad)
    finally:
        dist.destroy_process_group()


def test_each_gradient_becomes_the_mean_over_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(port, results), nprocs=2, join=True)
    for rank in (0, 1):
        a, b, frozen = results[rank]
        assert torch.equal(a, torch.full((2, 3), 1.5))
        assert torch.equal(b, torch.arange(4.0) * 20)
        assert frozen is None
