import torch

from lora_diffusion.training.lean_activations import LeanGEGLU, lean_feed_forwards


def test_lean_geglu_gives_bit_identical_outputs_and_gradients():
    from diffusers.models.activations import GEGLU

    torch.manual_seed(0)
    reference = GEGLU(16, 24)
    lean = LeanGEGLU(reference.proj)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 5, 16, dtype=dtype)
        reference.to(dtype)
        outputs, grads = [], []
        for module in (reference, lean):
            xi = x.clone().requires_grad_(True)
            out = module(xi)
            out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype))
            outputs.append(out.detach())
            grads.append((xi.grad, module.proj.weight.grad.clone()))
            module.proj.weight.grad = module.proj.bias.grad = None
        assert torch.equal(outputs[0], outputs[1])
        assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_every_unet_feed_forward_is_swapped_and_the_output_is_unchanged(sd1):
    from conftest import unet_inputs, unet_out

    unet = sd1["unet"]
    inputs = unet_inputs(unet)
    before = unet_out(unet, inputs)
    names_before = sorted(n for n, _ in unet.named_parameters())
    from diffusers.models.attention import FeedForward

    feed_forwards = sum(isinstance(m, FeedForward) for m in unet.modules())
    assert feed_forwards == 4  # down, mid and two up transformer blocks
    assert lean_feed_forwards(unet) == feed_forwards
    assert sum(isinstance(m, LeanGEGLU) for m in unet.modules()) == feed_forwards
    assert sorted(n for n, _ in unet.named_parameters()) == names_before
    assert torch.equal(unet_out(unet, inputs), before)
