"""Validation loss on a held-out split (issue 33 item 6): the images are held out of training, evaluated with the
same noise every time (so the curve compares steps), logged beside the training loss."""

import json

import pytest

import lora_diffusion.training.trainer as trainer
from lora_diffusion.errors import UserError
from lora_diffusion.training.config import TrainConfig
from lora_diffusion.training.trainer import train
from lora_diffusion.training.validation_loss import split_examples, validation_interval


def test_the_split_is_a_seeded_share_of_the_images_and_needs_two():
    examples = list(range(10))
    train_part, held = split_examples(examples, 0.2, seed=3)
    assert len(held) == 2 and sorted(train_part + held) == examples
    assert split_examples(examples, 0.2, seed=3) == (train_part, held)  # the same seed, the same images
    assert split_examples(examples, 0.01, seed=3)[1] != []  # at least one
    assert split_examples(examples, 0.0, seed=3) == (examples, [])
    with pytest.raises(UserError, match=r"^--validation-split 0\.1 needs at least 2 images \(found 1\)"):
        split_examples([0], 0.1, seed=0)
    with pytest.raises(UserError, match=r"^--validation-split must be in \[0, 1\), got 1\.0"):
        TrainConfig(data="d", output="o.safetensors", validation_split=1.0).validate()
    assert validation_interval(0, 400) == 20 and validation_interval(7, 400) == 7 and validation_interval(0, 5) == 1


def test_held_out_images_are_evaluated_with_fixed_noise_and_logged_beside_the_training_loss(
        tiny_base, style_folder, tmp_path, monkeypatch):
    repeats = []
    real = trainer._validation_loss

    def twice(run, step):
        value = real(run, step)
        if value is not None:
            repeats.append((value, run.validation(run)))  # the same weights: the same loss, bit for bit
        return value

    monkeypatch.setattr(trainer, "_validation_loss", twice)
    records = []
    cfg = TrainConfig(base=tiny_base, data=style_folder, output=str(tmp_path / "a.safetensors"), resolution=32,
                      steps=4, batch_size=2, lr=5e-3, seed=1, validation_split=0.25, validation_every=2)
    result = train(cfg, progress=False, on_step=records.append)
    assert result.steps == 4
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4]
    assert repeats and all(a == b for a, b in repeats)
    assert repeats[0][0] != repeats[1][0]  # the adapter changed between steps 2 and 4, the inputs did not
    logged = [json.loads(line) for line in (tmp_path / "a-logs" / "train_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["val_loss"]) for r in logged if "val_loss" in r] == [(2, repeats[0][0]), (4, repeats[1][0])]


def test_a_validation_split_trains_on_the_rest_only(tiny_base, style_folder, tmp_path, monkeypatch):
    import lora_diffusion.training.run_setup as run_setup

    seen = []
    real = run_setup.TrainingData

    def recording(examples, *args, **kwargs):
        seen.append(sorted(str(e.path) for e in examples))
        return real(examples, *args, **kwargs)

    monkeypatch.setattr(run_setup, "TrainingData", recording)
    monkeypatch.setattr("lora_diffusion.training.validation_loss.TrainingData", recording)
    cfg = TrainConfig(base=tiny_base, data=style_folder, output=str(tmp_path / "a.safetensors"), resolution=32,
                      steps=1, batch_size=2, seed=1, validation_split=0.5)
    train(cfg, progress=False)
    held, trained = seen  # the held-out images are encoded first, while the encoders are on the device
    assert len(held) == len(trained) == 2 and not set(held) & set(trained)
