"""Where the built-in base model's training step spends its time on a GPU (quick probe)."""

import time

import torch
import torch.nn.functional as F

from lora_diffusion.models.builtin import build_untrained


def timed(label, fn, n=20):
    fn()
    torch.cuda.synchronize()
    t = time.time()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    print(f"{label}: {(time.time() - t) / n * 1000:.1f} ms", flush=True)


def main():
    vae, unet, te = build_untrained()
    dev = "cuda"
    unet, te = unet.to(dev), te.to(dev)
    x = torch.randn(256, 4, 16, 16, device=dev)
    ids = torch.randint(0, 49408, (256, 77), device=dev)
    t = torch.randint(0, 1000, (256,), device=dev)
    for bench in (False, True):
        torch.backends.cudnn.benchmark = bench
        for dtype in (None, torch.bfloat16):
            def step():
                with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                    ctx = te(ids).last_hidden_state
                    out = unet(x, t, ctx).sample
                F.mse_loss(out.float(), x).backward()
            timed(f"unet+te fwd/bwd b256 cudnn.benchmark={bench} autocast={dtype}", step)
    with torch.no_grad():
        timed("te fwd only bf16", lambda: te(ids))
    ema = [p.detach().clone() for p in list(unet.parameters()) + list(te.parameters())]
    params = list(unet.parameters()) + list(te.parameters())

    def ema_loop():
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p, 0.001)

    def ema_foreach():
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 0.001)

    timed("ema python loop", ema_loop)
    timed("ema foreach", ema_foreach)
    vae = vae.to(dev)
    px = torch.randn(128, 3, 64, 64, device=dev)

    def vstep():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            d = vae.encode(px).latent_dist
            r = vae.decode(d.sample()).sample
        F.mse_loss(r.float(), px).backward()

    timed("vae fwd/bwd b128 bf16", vstep)


if __name__ == "__main__":
    main()
