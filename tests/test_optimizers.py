"""The optimizers people reach for (issue 33 item 7): each trains, gets a learning rate that suits it, and is
refused with one line when its package is missing; schedule-free AdamW writes its averaged weights."""

import importlib

import pytest
import torch
from safetensors.torch import load_file

from lora_diffusion.errors import UserError
from lora_diffusion.training.config import TrainConfig
from lora_diffusion.training.optimizers import OPTIMIZERS, evaluation_weights
from lora_diffusion.training.plan import BaseFacts, DeviceFacts, derive_plan
from lora_diffusion.training.trainer import train

BUILTIN = BaseFacts("builtin", 64, upscale_warning=True)


def _plan(**values):
    return derive_plan(TrainConfig(data="d", output="o.safetensors", **values), BUILTIN, 24, DeviceFacts())


def test_each_optimizer_gets_the_learning_rate_that_suits_it_unless_the_user_sets_one():
    adamw = _plan().config
    assert (adamw.lr, adamw.text_encoder_lr) == (0.002, 0.001)
    prodigy = _plan(optimizer="prodigy")
    assert (prodigy.config.lr, prodigy.config.text_encoder_lr) == (1.0, 1.0)
    assert prodigy.reasons["lr"] == "--optimizer prodigy: Prodigy finds its own step size: lr 1 is its scale"
    lion = _plan(optimizer="lion").config
    assert (lion.lr, lion.text_encoder_lr) == pytest.approx((0.0004, 0.0002))
    assert _plan(optimizer="lion", lr=3e-4).config.lr == 3e-4
    assert _plan(optimizer="adafactor").config.lr == 0.002
    free = _plan(optimizer="adamw-schedulefree")
    assert free.config.lr_scheduler == "constant"
    assert free.reasons["lr_scheduler"].startswith("--optimizer adamw-schedulefree schedules itself")


def test_settings_that_fight_a_self_scheduling_optimizer_are_refused_in_one_line():
    with pytest.raises(UserError, match=r"^--optimizer adamw-schedulefree schedules the learning rate itself: leave "
                                        r"--lr-scheduler unset \(it is then constant\), not cosine$"):
        _plan(optimizer="adamw-schedulefree", lr_scheduler="cosine")
    with pytest.raises(UserError, match=r"^--ema-decay with --optimizer adamw-schedulefree: it already writes an "
                                        r"average of the weights; drop --ema-decay$"):
        _plan(optimizer="adamw-schedulefree", ema_decay=0.99)


def test_a_missing_optimizer_package_is_named_in_one_line(tiny_base, style_folder, tmp_path, monkeypatch):
    real = importlib.import_module

    def without_prodigy(name, *args):
        if name == "prodigyopt":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_prodigy)
    cfg = TrainConfig(base=tiny_base, data=style_folder, output=str(tmp_path / "a.safetensors"), resolution=32,
                      steps=2, batch_size=2, optimizer="prodigy")
    with pytest.raises(UserError, match=r"^optimizer prodigy needs the package prodigyopt: pip install prodigyopt "
                                        r"\(or use --optimizer adamw\)$"):
        train(cfg, progress=False)
    assert not (tmp_path / "a.safetensors").exists()


@pytest.mark.parametrize("name", ["prodigy", "adafactor", "adamw-schedulefree", "lion"])
def test_each_optimizer_trains_the_lora_with_its_own_class(name, tiny_base, style_folder, tmp_path, monkeypatch):
    import lora_diffusion.training.run_setup as run_setup

    made = []
    real = run_setup.make_optimizer
    monkeypatch.setattr(run_setup, "make_optimizer", lambda *a: made.append(real(*a)) or made[-1])
    cfg = TrainConfig(base=tiny_base, data=style_folder, output=str(tmp_path / "a.safetensors"), resolution=32,
                      steps=3, batch_size=2, optimizer=name, seed=1)
    result = train(cfg, progress=False)
    module = OPTIMIZERS[name].module.split(".")[0]
    assert type(made[0]).__module__.split(".")[0] == module
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    up = [v for k, v in load_file(str(tmp_path / "a.safetensors")).items() if k.endswith("lora_up.weight")]
    assert up and any(v.abs().sum() > 0 for v in up)  # B left zero: the optimizer moved it


def test_schedule_free_writes_its_averaged_weights_not_the_interpolation_it_trains_at(tiny_base, style_folder,
                                                                                   tmp_path, monkeypatch):
    import lora_diffusion.training.trainer as trainer
    from lora_diffusion.lora.inject import lora_layers

    seen = {}

    def save(run, path, steps, curve=()):
        layers = lora_layers(run.denoiser.model)
        seen["train"] = {n: layer.lora_B["lora"].weight.detach().clone() for n, layer in layers.items()}
        with evaluation_weights(run.optimizer):
            seen["eval"] = {n: layer.lora_B["lora"].weight.detach().clone() for n, layer in layers.items()}
        real_save(run, path, steps, curve)
        seen["after"] = {n: layer.lora_B["lora"].weight.detach().clone() for n, layer in layers.items()}

    real_save = trainer.save_trained
    monkeypatch.setattr(trainer, "save_trained", save)
    cfg = TrainConfig(base=tiny_base, data=style_folder, output=str(tmp_path / "a.safetensors"), resolution=32,
                      steps=4, batch_size=2, lr=5e-3, optimizer="adamw-schedulefree", save_dtype="fp32", seed=1)
    train(cfg, progress=False)
    name = sorted(seen["eval"])[0]
    assert not torch.equal(seen["eval"][name], seen["train"][name])  # the two sequences differ after 4 steps
    # training goes on from its own weights (schedule-free's swap back is a lerp: equal to float rounding)
    assert all(torch.allclose(seen["after"][n], seen["train"][n], rtol=0, atol=1e-6) for n in seen["train"])
    saved = load_file(str(tmp_path / "a.safetensors"))
    key = next(k for k in saved if k.endswith("lora_up.weight") and
               k.startswith("lora_unet_" + name.replace(".", "_")))
    written = saved[key].reshape(seen["eval"][name].shape)
    assert torch.allclose(written, seen["eval"][name], rtol=0, atol=1e-6)  # each swap is a lerp: float rounding
    assert not torch.allclose(written, seen["train"][name], rtol=0, atol=1e-4)
