"""The CUDA-graph step's fallback on a real GPU (skipped without CUDA; run through the device tool)."""

import pytest
import torch
from torch import nn

from lora_diffusion.training.cuda_graphs import GraphedUNet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class _SyncingUNet(nn.Module):
    """Reads a value back to the host inside forward: legal eagerly, illegal while capturing."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4, device="cuda"))

    def forward(self, sample, timesteps, states, added_cond_kwargs=None):
        scale = float(torch.randn(1, device=sample.device).abs().sum().item() > -1)  # 1.0, synchronizing
        return type("Out", (), {"sample": sample * self.weight * scale})()


def test_a_failed_capture_falls_back_to_eager_and_random_ops_keep_working():
    reports = []
    step_unet = GraphedUNet(_SyncingUNet(), report=reports.append)
    sample = torch.ones(2, 4, device="cuda", requires_grad=True)
    out = step_unet(sample, torch.tensor([3], device="cuda"), torch.zeros(2, 1, device="cuda")).sample
    assert step_unet.failed is not None and reports[0].startswith("warning: CUDA graph capture failed (")
    assert torch.equal(out.detach(), torch.ones(2, 4, device="cuda"))
    # before the fix the generator stayed registered with the aborted capture and this raised
    assert torch.randn(8, device="cuda").shape == (8,)
