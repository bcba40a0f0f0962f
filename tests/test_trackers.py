"""Trackers through accelerate (issue 33 item 9): --log-with picks them, each step's loss and lr (and the held-out
loss) reach them, a missing package is one line, and wandb logs offline without a key."""

import os

import pytest
from accelerate.tracking import GeneralTracker

from lora_diffusion.errors import UserError
from lora_diffusion.training import trackers
from lora_diffusion.training.config import TrainConfig
from lora_diffusion.training.trainer import train


class Recorder(GeneralTracker):
    """An accelerate tracker that keeps what it is given."""

    name = "recorder"
    requires_logging_directory = False

    def __init__(self):
        super().__init__()
        self.config, self.logged, self.finished = None, [], False

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values):
        self.config = values

    def log(self, values, step=None, **kwargs):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


def test_each_step_reaches_the_trackers_through_accelerate(tiny_base, style_folder, tmp_path, monkeypatch):
    import lora_diffusion.training.run_setup as run_setup

    recorder = Recorder()
    monkeypatch.setattr(run_setup, "trackers_for", lambda choice: [recorder])
    records = []
    cfg = TrainConfig(base=tiny_base, data=style_folder, output=str(tmp_path / "a.safetensors"), resolution=32,
                      steps=3, batch_size=2, lr=1e-3, seed=1, validation_split=0.25, validation_every=3)
    train(cfg, progress=False, on_step=records.append)
    assert [step for step, _ in recorder.logged] == [1, 2, 3]
    assert [v["train/loss"] for _, v in recorder.logged] == [r["loss"] for r in records]
    assert "val/loss" in recorder.logged[-1][1] and "val/loss" not in recorder.logged[0][1]
    assert recorder.config["steps"] == 3 and recorder.config["rank"] >= 1 and recorder.config["validation_split"] == 0.25
    assert recorder.finished


def test_the_choice_names_trackers_and_a_missing_package_is_one_line(monkeypatch):
    monkeypatch.setattr(trackers, "_installed", lambda name: name == "tensorboard")
    assert trackers.trackers_for("auto") == ["tensorboard"]
    assert trackers.trackers_for("none") == []
    assert trackers.trackers_for("tensorboard") == ["tensorboard"]
    with pytest.raises(UserError, match=r"^--log-with wandb needs the package wandb: pip install wandb \(or "
                                        r"--log-with auto\)$"):
        trackers.trackers_for("wandb")
    with pytest.raises(UserError, match=r"^--log-with all needs the package wandb"):
        trackers.trackers_for("all")
    monkeypatch.setattr(trackers, "_installed", lambda name: False)
    assert trackers.trackers_for("auto") == []


def test_wandb_logs_offline_without_a_key_and_the_user_mode_wins(monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    trackers.wandb_offline_if_needed(["wandb"], report=False)
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    trackers.wandb_offline_if_needed(["wandb"], report=False)
    assert os.environ["WANDB_MODE"] == "online"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "k")
    trackers.wandb_offline_if_needed(["wandb"], report=False)
    assert "WANDB_MODE" not in os.environ  # a key and a network: online
