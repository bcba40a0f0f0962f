"""Masked loss (issue 33 item 3): masks from a masks/ folder or the alpha channel, placed exactly as the image, and a
loss that ignores what lies outside them — the gradient from a masked-out region is exactly zero."""

import numpy as np
import pytest
import torch
from PIL import Image

from lora_diffusion.data.dataset import TrainingData
from lora_diffusion.data.folder import scan_folder
from lora_diffusion.data.masks import masked_loss_mode
from lora_diffusion.errors import UserError
from lora_diffusion.training.config import TrainConfig
from lora_diffusion.training.objective import denoising_loss, masked_mean
from lora_diffusion.training.trainer import train


def test_the_error_outside_the_mask_adds_nothing_and_gets_no_gradient():
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    latents = torch.randn(2, 4, 8, 8)
    prediction = torch.nn.Parameter(torch.randn(2, 4, 8, 8))
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, 2:6, 1:5] = 1.0
    mask[1, :, :, :3] = 0.5  # grey: half weight, the same mean

    class Denoiser(torch.nn.Module):  # a prediction that is its own parameter: its gradient is the loss's
        def forward(self, noisy, t, states, added_cond_kwargs=None):
            return type("Out", (), {"sample": prediction})()

    loss = denoising_loss(Denoiser(), DDPMScheduler(), latents, torch.zeros(2, 1, 4), torch.Generator().manual_seed(1),
                          mask=mask)
    loss.backward()
    outside = (mask == 0).expand_as(prediction)
    assert prediction.grad[outside].abs().max() == 0  # exactly zero, not small
    assert (prediction.grad[~outside] != 0).all()
    error = torch.rand(2, 4, 8, 8)
    expected = torch.stack([error[0, :, 2:6, 1:5].mean(), error[1, :, :, :3].mean()])
    assert torch.allclose(masked_mean(error, mask), expected)
    assert torch.equal(masked_mean(error, None), error.mean(dim=(1, 2, 3)))


def _folder(tmp_path, alpha=False):
    folder = tmp_path / "data"
    (folder / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        rgb = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
        if alpha:
            Image.fromarray(np.dstack([rgb, rgb[..., 0]]), "RGBA").save(folder / f"{i}.png")
        else:
            Image.fromarray(rgb).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a picture {i}")
    return folder, rng


def test_a_mask_is_cropped_resized_and_flipped_exactly_as_its_image(tmp_path):
    folder, _ = _folder(tmp_path)
    for i in range(3):  # the mask is the image's red channel: placed alike, they stay equal
        Image.open(folder / f"{i}.png").getchannel("R").save(folder / "masks" / f"{i}.png")
    scan = scan_folder(folder)
    assert len(scan.examples) == 3  # the masks/ folder holds masks, not training images
    data = TrainingData(scan.examples, 32, crop="random", flip=True, bucketing=True, seed=5, masked=True)
    for index in range(3):
        for epoch in range(4):
            red = (data.pixels(index, epoch)[0] + 1) * 127.5
            assert torch.allclose(data.mask(index, epoch)[0] * 255, red, atol=1e-3)


def test_alpha_channels_are_masks_when_asked_and_an_image_without_one_counts_whole(tmp_path):
    folder, _ = _folder(tmp_path, alpha=True)
    (folder / "masks").rmdir()
    paths = [e.path for e in scan_folder(folder).examples]
    assert masked_loss_mode("auto", paths) == (False, False, "")  # alpha channels only when asked
    assert masked_loss_mode("on", paths) == (True, True, "masked loss: 3 of 3 images have a mask (3 from alpha "
                                                         "channels); the rest count whole")
    data = TrainingData(scan_folder(folder).examples, 32, masked=True, alpha_masks=True)
    as_file = tmp_path / "as-file"  # the same alpha channels as mask files: the same masks
    (as_file / "masks").mkdir(parents=True)
    for i in range(3):
        image = Image.open(folder / f"{i}.png")
        image.convert("RGB").save(as_file / f"{i}.png")
        image.getchannel("A").save(as_file / "masks" / f"{i}.png")
        (as_file / f"{i}.txt").write_text(f"a picture {i}")
    files = TrainingData(scan_folder(as_file).examples, 32, masked=True)
    assert torch.equal(data.mask(0, 0), files.mask(0, 0)) and data.mask(0, 0).std() > 0.1
    plain = TrainingData(scan_folder(folder).examples, 32, masked=True, alpha_masks=False)
    assert torch.equal(plain.mask(0, 0), torch.ones(1, 32, 32))
    with pytest.raises(UserError, match=r"^--masked-loss on: no image has a mask"):
        masked_loss_mode("on", [str(tmp_path / "none.png")])


def test_masked_training_runs_and_differs_from_unmasked(tiny_base, style_folder, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(style_folder, data)
    (data / "masks").mkdir()
    for i in range(4):
        mask = Image.new("L", (32, 32), 0)
        mask.paste(255, (8, 8, 24, 24))  # the square only
        mask.save(data / "masks" / f"{i}.png")
    common = dict(base=tiny_base, resolution=32, steps=3, batch_size=2, lr=5e-3, seed=1)
    masked = train(TrainConfig(data=str(data), output=str(tmp_path / "m.safetensors"), **common), progress=False)
    whole = train(TrainConfig(data=str(data), output=str(tmp_path / "w.safetensors"), masked_loss="off", **common),
                  progress=False)
    assert masked.losses != whole.losses and all(np.isfinite(masked.losses))
