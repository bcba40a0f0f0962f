"""`lora-diffusion train` on a tiny SD1-architecture base: learning, caching, resume, errors."""

import json
from pathlib import Path
import os

import pytest
from types import SimpleNamespace

import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import assert_kill_and_resume_is_bit_identical
from lora_diffusion import UserError
from lora_diffusion.cli.main import main
from lora_diffusion.training.config import TrainConfig
from lora_diffusion.training.trainer import train


def _cfg(base, data, out, **kw):
    values = dict(base=base, data=data, output=str(out), resolution=32, steps=8, batch_size=2, lr=5e-3, seed=1)
    values.update(kw)
    return TrainConfig(**values)


def _fixed_loss(base, data, adapter, weight):
    from diffusers import DDPMScheduler

    from lora_diffusion import load_adapter, pipeline_components, set_adapter_weight
    from lora_diffusion.data.dataset import TrainingData
    from lora_diffusion.data.folder import scan_folder
    from lora_diffusion.models.loading import load_pipeline
    from lora_diffusion.training.objective import denoising_loss

    pipe = load_pipeline(base)
    comps = pipeline_components(pipe)
    name = load_adapter(adapter, comps)
    set_adapter_weight(comps["unet"], name, weight)
    d = TrainingData(scan_folder(data).examples, 32)
    with torch.no_grad():
        pixels = torch.stack([d.pixels(i, 0) for i in range(len(d.items))])
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        ids = pipe.tokenizer([e.caption for e in d.items], padding="max_length", max_length=77, return_tensors="pt").input_ids
        states = pipe.text_encoder(ids)[0]
        sched = DDPMScheduler.from_config(pipe.scheduler.config)
        return sum(denoising_loss(pipe.unet, sched, latents, states, torch.Generator().manual_seed(k)).item() for k in range(8))


def test_short_run_lowers_loss_and_writes_an_adapter_inspect_reads(tiny_base, style_folder, tmp_path, capsys):
    out = tmp_path / "style.safetensors"
    result = train(_cfg(tiny_base, style_folder, out, steps=30, rank=4), progress=False)
    assert result.output == out and out.is_file() and result.steps == 30
    assert _fixed_loss(tiny_base, style_folder, out, 1.0) < _fixed_loss(tiny_base, style_folder, out, 0.0)
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rank"] == 4 and info["modules"] == 32 and info["base"] == "sd1"
    training = json.loads(info["metadata"]["lora_diffusion.training"])
    assert training["steps"] == 30 and training["data"] == os.path.basename(style_folder)  # no absolute path
    assert json.loads(info["metadata"]["lora_diffusion.dataset"])["images"] == 4
    log = [json.loads(line) for line in (tmp_path / "style-logs" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 31))
    curve = json.loads(info["metadata"]["lora_diffusion.loss_curve"])  # the Library plots it
    assert curve == [[i + 1, round(loss, 6)] for i, loss in enumerate(result.losses)]


def test_training_again_onto_an_existing_output_keeps_the_earlier_file_as_bak(tiny_base, style_folder, tmp_path,
                                                                              capsys):
    out = tmp_path / "style.safetensors"
    out.write_bytes(b"an earlier LoRA")
    argv = ["train", "--base", tiny_base, "--data", style_folder, "--output", str(out), "--steps", "2", "--quiet"]
    assert main(argv) == 0
    assert "the file it replaced is kept as style.safetensors.bak" in capsys.readouterr().out
    assert (tmp_path / "style.safetensors.bak").read_bytes() == b"an earlier LoRA"
    assert out.read_bytes() != b"an earlier LoRA"


def test_cached_latents_give_the_same_loss_sequence(tiny_base, style_folder, tmp_path):
    cached = train(_cfg(tiny_base, style_folder, tmp_path / "a.safetensors", cache="memory"), progress=False)
    uncached = train(_cfg(tiny_base, style_folder, tmp_path / "b.safetensors", cache="off"), progress=False)
    assert len(cached.losses) == 8
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(uncached.losses), rtol=1e-5, atol=1e-7)


def test_text_encoder_lora_is_trained_when_asked(tiny_base, style_folder, tmp_path):
    out = tmp_path / "te.safetensors"
    train(_cfg(tiny_base, style_folder, out, steps=3, train_text_encoder=True, text_encoder_lr=1e-2), progress=False)
    tensors = load_file(str(out))
    te_up = [v for k, v in tensors.items() if k.startswith("lora_te_") and k.endswith("lora_up.weight")]
    assert len(te_up) == 8 and all(t.abs().sum() > 0 for t in te_up)  # B moved away from zero


def test_kill_after_checkpoint_then_resume_is_bit_identical(tiny_base, style_folder, tmp_path):
    assert_kill_and_resume_is_bit_identical(
        ["--base", tiny_base, "--data", style_folder, "--resolution", "32", "--steps", "6", "--batch-size", "2",
         "--lr", "5e-3", "--seed", "4", "--checkpoint-every", "3", "--quiet"], tmp_path)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "optimizer=sgd"], "config key 'optimizer' is 'sgd'; allowed values: adamw, adamw8bit"),
        (["--set", "mixed_precision=fp8"], "config key 'mixed_precision' is 'fp8'; allowed values: no, fp16, bf16"),
        (["--steps", "0"], "config key 'steps' must be at least 1"),
        (["--steps", "ten"], "error: --steps must be an integer or auto, got 'ten'"),
        (["--lr", "-1"], "config key 'lr' must be greater than 0"),
        (["--resolution", "30"], "'resolution' must be a multiple of 8"),
        (["--set", "colour=red"], "unknown config key 'colour'"),
        (["--set", "novalue"], "--set 'novalue' must look like key=value"),
        (["--caption-dropout", "1.5"], "'caption_dropout' must be in [0, 1)"),
    ],
)
def test_bad_values_give_one_clear_line(argv, message, tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "x.safetensors")] + argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_bad_yaml_and_unknown_yaml_key(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("steps: 10\nlearning_rate: 0.1\n")
    assert main(["train", str(tmp_path / "c.yaml"), "--data", "d", "--output", "o.safetensors"]) == 2
    assert "unknown config key 'learning_rate'" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("steps: [1,\n")
    assert main(["train", str(tmp_path / "bad.yaml")]) == 2
    assert "is not valid YAML at line" in capsys.readouterr().err


def test_folder_with_no_usable_images_exits_non_zero(tiny_base, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.png").write_bytes(b"not a png")
    code = main(["train", "--base", tiny_base, "--data", str(empty), "--output", str(tmp_path / "o.safetensors"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no usable images" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_offloaded_encoders_give_the_same_run_and_refuse_uncacheable_settings(tiny_base, tmp_path):
    """Encoding everything up front (then moving VAE/text encoder away) changes nothing in the losses."""
    from lora_diffusion.training.config import TrainConfig
    from lora_diffusion.training.trainer import train

    data = str(Path(__file__).parent.parent / "examples" / "styles" / "sepia")
    common = dict(base=tiny_base, data=data, resolution=32, steps=5, batch_size=2, seed=3, sample_every=5,
                  validation_steps=2)
    plain = train(TrainConfig(output=str(tmp_path / "a.safetensors"), **common), progress=False)
    offloaded = train(TrainConfig(output=str(tmp_path / "b.safetensors"), offload_encoders="on", **common), progress=False)
    assert plain.losses == pytest.approx(offloaded.losses, rel=1e-5)
    assert (tmp_path / "b-logs" / "samples" / "final.png").is_file()
    from PIL import Image

    # four captions: a 2×2 grid, which a gallery cell shows whole (a row of four was a thin strip)
    assert Image.open(tmp_path / "b-logs" / "samples" / "final.png").size == (64, 64)
    with pytest.raises(UserError, match="offload_encoders needs cached latents and captions"):
        train(TrainConfig(output=str(tmp_path / "c.safetensors"), offload_encoders="on", crop="random", **common),
              progress=False)


def test_bucketed_batches_cache_every_shape_with_the_same_losses_as_uncached(tiny_base, tmp_path, monkeypatch):
    from lora_diffusion.training import step_inputs

    folder = tmp_path / "shapes"
    folder.mkdir()
    for i, size in enumerate([(48, 32), (32, 48), (32, 32), (48, 32), (32, 48), (32, 32)]):
        Image.new("RGB", size, (40 * i, 120, 200 - 30 * i)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a shape number {i}")
    seen = []
    real = step_inputs.StepInputs.latent_batch
    monkeypatch.setattr(step_inputs.StepInputs, "latent_batch",
                        lambda self, keys, *a, **k: (seen.append(len(keys)), real(self, keys, *a, **k))[1])
    # batch 2 over three buckets: the up-front encode pass batches each bucket's images on their own
    cached = train(_cfg(tiny_base, str(folder), tmp_path / "a.safetensors", bucketing=True, offload_encoders="on",
                        steps=6), progress=False)
    encode_pass = seen[:3]
    uncached = train(_cfg(tiny_base, str(folder), tmp_path / "b.safetensors", bucketing=True, cache="off", steps=6),
                     progress=False)
    assert encode_pass == [2, 2, 2]  # three shapes of two images (32 px: up to 64 per call)
    assert 0 < cached.first_step_s < cached.seconds  # in-process: timed from train()'s start
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(uncached.losses), rtol=1e-5, atol=1e-7)


def test_encode_pass_batches_about_four_512px_images_or_the_training_batch():
    from lora_diffusion.training.step_inputs import encode_pass_batch

    assert [encode_pass_batch(b, r) for b, r in [(1, 512), (1, 1024), (8, 512), (1, 768), (2, 64), (2, 32)]] == [
        4, 1, 8, 1, 64, 64]


def test_flipped_images_cache_both_orientations_with_the_same_losses_as_uncached(tiny_base, style_folder, tmp_path,
                                                                                monkeypatch):
    from lora_diffusion.training import step_inputs

    cached = train(_cfg(tiny_base, style_folder, tmp_path / "a.safetensors", flip=True, offload_encoders="on",
                        steps=12), progress=False)
    uncached = train(_cfg(tiny_base, style_folder, tmp_path / "b.safetensors", flip=True, cache="off", steps=12),
                     progress=False)
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(uncached.losses), rtol=1e-5, atol=1e-7)
    seen = []
    real = step_inputs.StepInputs.encode_all
    monkeypatch.setattr(step_inputs.StepInputs, "encode_all",
                        lambda self, data, batch: (real(self, data, batch), seen.append(set(self.latents))))
    train(_cfg(tiny_base, style_folder, tmp_path / "c.safetensors", flip=True, offload_encoders="on", steps=1),
          progress=False)
    assert seen == [{(i, f) for i in range(4) for f in (False, True)}]  # 4 images x both orientations


def test_uncached_runs_encode_the_next_batch_during_the_step_with_identical_losses(tiny_base, style_folder, tmp_path,
                                                                                   monkeypatch):
    from lora_diffusion.training import step_inputs

    log = []
    real_stage, real_encode = step_inputs.StepInputs.stage, step_inputs.StepInputs._encode_missing
    monkeypatch.setattr(step_inputs.StepInputs, "stage",
                        lambda self, keys, pixels_for: (log.append("stage"), real_stage(self, keys, pixels_for))[1])
    monkeypatch.setattr(step_inputs.StepInputs, "_encode_missing",
                        lambda self, keys, pixels_for: (log.append(f"encode {len(keys)}"),
                                                        real_encode(self, keys, pixels_for))[1])
    staged = train(_cfg(tiny_base, style_folder, tmp_path / "a.safetensors", cache="off", flip=True, steps=4),
                   progress=False)
    # only the first batch is encoded by the step itself; each later one was staged during the step before
    assert log == ["encode 2", "stage", "encode 2", "stage", "encode 2", "stage", "encode 2"]
    monkeypatch.setattr(step_inputs.StepInputs, "stage", lambda self, keys, pixels_for: None)
    unstaged = train(_cfg(tiny_base, style_folder, tmp_path / "b.safetensors", cache="off", flip=True, steps=4),
                     progress=False)
    assert staged.losses == unstaged.losses


def test_a_staged_batch_serves_only_the_batch_with_the_same_keys():
    from types import SimpleNamespace

    from lora_diffusion.training.step_inputs import StepInputs

    encoded = []

    class Vae:
        dtype, config = torch.float32, SimpleNamespace(scaling_factor=1.0)

        def encode(self, pixels):
            encoded.append(pixels[:, 0, 0, 0].tolist())
            return SimpleNamespace(latent_dist=SimpleNamespace(mean=pixels, std=torch.zeros_like(pixels)))

    enc = StepInputs(Vae(), None, torch.device("cpu"), cache_latents=False, cache_text=False)
    pixels_for = lambda key: torch.full((1, 2, 2), float(key))  # noqa: E731
    enc.stage([1, 2], pixels_for)
    first = enc.latent_batch([1, 2], pixels_for, torch.Generator())
    enc.stage([3, 4], pixels_for)
    second = enc.latent_batch([4, 3], pixels_for, torch.Generator())  # another batch: encoded afresh
    assert encoded == [[1.0, 2.0], [3.0, 4.0], [4.0, 3.0]]
    assert first[:, 0, 0, 0].tolist() == [1.0, 2.0] and second[:, 0, 0, 0].tolist() == [4.0, 3.0]
    assert enc.staged is None


def test_a_timestep_range_draws_only_its_noise_levels_and_the_full_range_draws_as_before():
    from diffusers import DDPMScheduler

    from lora_diffusion.training.objective import denoising_loss

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, noisy, timesteps, states, added_cond_kwargs=None):
            seen.append(timesteps.clone())
            return type("Out", (), {"sample": torch.zeros_like(noisy)})()

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    latents, states = torch.zeros(64, 4, 2, 2), torch.zeros(64, 3, 8)
    for window in ((0, 1000), None, (100, 700)):
        denoising_loss(Recorder(), scheduler, latents, states, torch.Generator().manual_seed(3), timesteps=window)
    assert torch.equal(seen[0], seen[1])  # the whole range is the default draw, number for number
    assert int(seen[2].min()) >= 100 and int(seen[2].max()) < 700 and len(set(seen[2].tolist())) > 30


@pytest.mark.parametrize("low, high", [(500, 500), (-1, 900), (0, 1001)])
def test_a_bad_timestep_range_is_one_line(low, high, tmp_path):
    cfg = TrainConfig(data=str(tmp_path), output=str(tmp_path / "a.safetensors"), min_timestep=low, max_timestep=high)
    with pytest.raises(UserError, match=rf"^timesteps {low}\.\.{high}: need 0 <= --min-timestep < --max-timestep <= 1000"):
        cfg.validate()


def test_training_at_drawn_weights_keeps_each_steps_noise_and_saves_at_full_weight(tiny_base, style_folder, tmp_path,
                                                                                   monkeypatch):
    import lora_diffusion.training.trainer as trainer
    from lora_diffusion.lora.inject import lora_layers

    seen = []

    def save(run, path, steps, curve=()):
        seen.append({layer.adapter_weight["lora"] for layer in lora_layers(run.denoiser.model).values()})
        real_save(run, path, steps, curve)

    real_save = trainer.save_trained
    monkeypatch.setattr(trainer, "save_trained", save)
    common = dict(base=tiny_base, data=style_folder, resolution=32, steps=4, batch_size=2, lr=5e-3, seed=2)
    full = train(TrainConfig(output=str(tmp_path / "a.safetensors"), **common), progress=False)
    drawn = train(TrainConfig(output=str(tmp_path / "b.safetensors"), train_weight_min=0.3, **common), progress=False)
    # step 1 starts from B = 0, where the weight cannot matter: the same noise gives the same loss, bit for bit;
    # after it, the drawn weights train a different adapter
    assert drawn.losses[0] == full.losses[0] and drawn.losses[1:] != full.losses[1:]
    assert seen == [{1.0}, {1.0}]  # the file is written with the adapter back at full weight
    with pytest.raises(UserError, match=r"^config key 'train_weight_min' must be in \(0, 1\], got 0"):
        TrainConfig(output=str(tmp_path / "c.safetensors"), train_weight_min=0, **common).validate()


def test_a_blended_step_is_taught_its_weights_share_of_the_way_from_the_base_to_the_data():
    from torch import nn

    from lora_diffusion.lora.config import LoraConfig
    from lora_diffusion.lora.inject import inject_adapter, lora_layers
    from lora_diffusion.training.optimizer_step import BlendedDenoiser

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6))
    inject_adapter(model, "lora", LoraConfig(rank=2, alpha=2), targets=["0"])
    for layer in lora_layers(model).values():
        nn.init.normal_(layer.lora_B["lora"].weight)  # a trained adapter: B ≠ 0

    def set_weight(w):
        for layer in lora_layers(model).values():
            layer.set_weight("lora", w)

    x, target, w = torch.randn(3, 6), torch.randn(3, 6), 0.4
    forward = lambda inputs: SimpleNamespace(sample=model(inputs))  # noqa: E731 - a denoiser's output shape
    set_weight(w)
    blended = BlendedDenoiser(forward, w, set_weight)(x).sample
    assert {layer.adapter_weight["lora"] for layer in lora_layers(model).values()} == {w}
    with torch.no_grad():
        set_weight(0.0)
        base = model(x)
        set_weight(w)
        at_w = model(x)
    expected = torch.nn.functional.mse_loss(at_w, w * target + (1 - w) * base)
    assert torch.allclose(w**2 * torch.nn.functional.mse_loss(blended, target), expected, rtol=1e-5)
    assert blended.requires_grad  # gradients reach the LoRA through pred_w only
    blended.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_blended_training_starts_like_plain_training_scaled_by_the_weight_and_then_departs(tiny_base, style_folder,
                                                                                         tmp_path):
    common = dict(base=tiny_base, data=style_folder, resolution=32, steps=4, batch_size=2, lr=5e-3, seed=2,
                  train_weight_min=0.3)
    drawn = train(TrainConfig(output=str(tmp_path / "a.safetensors"), **common), progress=False)
    blend = train(TrainConfig(output=str(tmp_path / "b.safetensors"), train_weight_blend=True, **common),
                  progress=False)
    # at step 1, B = 0: pred_w = pred_0, so the blended loss is w² × the plain one (w = the step's drawn weight)
    from lora_diffusion.training.optimizer_step import OptimizerStep

    w = OptimizerStep.__new__(OptimizerStep)
    w.run, w._layers = SimpleNamespace(cfg=TrainConfig(seed=2, train_weight_min=0.3)), []
    first = w._train_weight(0)
    assert blend.losses[0] == pytest.approx(first**2 * drawn.losses[0], rel=1e-5)
    assert blend.losses[1:] != drawn.losses[1:]
