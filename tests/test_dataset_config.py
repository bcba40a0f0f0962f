"""Dataset configs with several subsets (issue 33 items 1-2): our YAML and kohya's TOML, per-subset repeats and
caption options, regularization images weighted by --prior-loss-weight."""

import pytest
import torch

from lora_diffusion.data.dataset import TrainingData
from lora_diffusion.data.dataset_config import Subset, load_dataset_config
from lora_diffusion.errors import UserError
from lora_diffusion.training.config import TrainConfig
from lora_diffusion.training.objective import denoising_loss
from lora_diffusion.training.run_setup import dataset_of, load_examples, subset_shares
from lora_diffusion.training.trainer import train

# laid out as kohya sd-scripts' dataset-config docs show it (folders made below)
KOHYA_TOML = """
[general]
shuffle_caption = true
caption_extension = '.txt'
keep_tokens = 1

# This is a DreamBooth-style dataset
[[datasets]]
resolution = 32
batch_size = 2
keep_tokens = 2

  [[datasets.subsets]]
  image_dir = '{me}'
  class_tokens = 'hoge girl'
  # This subset has keep_tokens = 2 (using the value of the parent datasets)

  [[datasets.subsets]]
  image_dir = '{other}'
  class_tokens = 'fuga boy'
  keep_tokens = 3
  num_repeats = 3

  [[datasets.subsets]]
  is_reg = true
  image_dir = '{reg}'
  class_tokens = 'human'
  keep_tokens = 1
  color_aug = false
"""


@pytest.fixture
def folders(tmp_path, style_folder):
    import shutil

    out = {}
    for name in ("me", "other", "reg"):
        out[name] = tmp_path / name
        shutil.copytree(style_folder, out[name])
    return out


def test_kohyas_toml_cascades_general_dataset_and_subset_options(tmp_path, folders):
    path = tmp_path / "dataset.toml"
    path.write_text(KOHYA_TOML.format(**{k: str(v) for k, v in folders.items()}))
    dataset = load_dataset_config(path)
    me, other, reg = dataset.subsets
    assert me == Subset(str(folders["me"]), 1, ".txt", "hoge girl", "", None, True, 2, None, False)
    assert (other.repeats, other.keep_tokens, other.trigger_word) == (3, 3, "fuga boy")
    assert (reg.is_reg, reg.keep_tokens) == (True, 1)
    assert dataset.settings == {"resolution": 32, "batch_size": 2}
    assert dataset.ignored == ["color_aug"]
    cfg = TrainConfig(dataset_config=str(path), output="o.safetensors")
    dataset = dataset_of(cfg)
    assert (cfg.resolution, cfg.batch_size) == (32, 2)  # the file's, where the flags leave them to the plan
    examples, _ = load_examples(cfg, tmp_path, dataset)
    assert [(e.subset, e.repeats) for e in examples] == [(0, 1)] * 4 + [(1, 3)] * 4 + [(2, 1)] * 4
    assert examples[4].caption.startswith("fuga boy, ")
    assert subset_shares(dataset, examples).splitlines()[1:3] == [
        f"  subset 1: {folders['me']} (training): 4 images × 1 repeats = 4 per epoch, 20% of it",
        f"  subset 2: {folders['other']} (training): 4 images × 3 repeats = 12 per epoch, 60% of it"]
    data = TrainingData(examples, 32, subsets=dataset.subsets, caption_shuffle=False)
    assert not data.fixed_captions  # a subset shuffles
    assert data.has_reg and [data.is_reg(i) for i in (0, 4, 16)] == [False, False, True]


def test_our_yaml_and_its_mistakes(tmp_path, folders):
    path = tmp_path / "dataset.yaml"
    path.write_text(f"subsets:\n  - folder: me\n    repeats: 2\n    flip: true\n  - folder: {folders['reg']}\n"
                    "    is_reg: true\n")
    dataset = load_dataset_config(path)
    assert [(s.folder, s.repeats, s.flip, s.is_reg) for s in dataset.subsets] == [
        (str(folders["me"]), 2, True, False), (str(folders["reg"]), 1, None, True)]  # relative to the file
    for text, message in [("subsets: []", "needs a 'subsets:' list"),
                          ("subsets:\n  - repeats: 2", "subset 1 has no folder"),
                          ("subsets:\n  - folder: me\n    repeat: 2", "subset 1 has unknown key 'repeat'"),
                          ("subsets:\n  - folder: me\n    repeats: 0", "subset 1: repeats must be a whole number"),
                          ("subsets:\n  - {folder: me, resolution: 32}\n  - {folder: me, resolution: 64}",
                           "resolution is 32 in one subset and 64 in another")]:
        path.write_text(text)
        with pytest.raises(UserError, match=f"^--dataset-config {path}: {message}"):
            load_dataset_config(path)
    with pytest.raises(UserError, match="^--data and --dataset-config both given"):
        TrainConfig(data="d", dataset_config=str(path), output="o.safetensors").validate()


def test_prior_loss_adds_the_weighted_class_loss():
    """One step by hand: a batch of one training and one class image; the loss is the mean of the training
    image's loss and prior_loss_weight × the class image's."""
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    latents = torch.randn(2, 4, 8, 8)
    prediction = torch.randn(2, 4, 8, 8)

    class Denoiser(torch.nn.Module):
        def forward(self, noisy, t, states, added_cond_kwargs=None):
            return type("Out", (), {"sample": prediction})()

    def loss(weights=None):
        return denoising_loss(Denoiser(), DDPMScheduler(), latents, torch.zeros(2, 1, 4),
                              torch.Generator().manual_seed(1), sample_weights=weights)

    generator = torch.Generator().manual_seed(1)  # the noise the loss draws, drawn again by hand
    noise = torch.randn(latents.shape, generator=generator)
    per_sample = ((prediction - noise) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(loss(), per_sample.mean())
    assert torch.allclose(loss(torch.tensor([1.0, 0.3])), (per_sample[0] + 0.3 * per_sample[1]) / 2)


def test_a_kohya_toml_trains_with_its_subsets_and_weights_class_images(tmp_path, folders, tiny_base, monkeypatch):
    import lora_diffusion.training.batch_feed as batch_feed

    path = tmp_path / "dataset.toml"
    path.write_text(KOHYA_TOML.format(**{k: str(v) for k, v in folders.items()}))
    weights = []
    real = batch_feed.MicroBatch

    def recording(*args):
        weights.append(args[5].tolist())
        return real(*args)

    monkeypatch.setattr(batch_feed, "MicroBatch", recording)
    cfg = TrainConfig(base=tiny_base, dataset_config=str(path), output=str(tmp_path / "a.safetensors"), steps=10,
                      prior_loss_weight=0.25, seed=3)
    result = train(cfg, progress=False)
    assert result.steps == 10
    assert all(len(w) == 2 for w in weights)  # the file's batch size
    assert {v for w in weights for v in w} == {1.0, 0.25}  # class images at the prior weight


def test_reg_generate_makes_class_images_once_with_the_base_and_trains_on_them(tmp_path, style_folder, tiny_base,
                                                                                monkeypatch):
    import shutil

    import lora_diffusion.data.class_images as class_images
    import lora_diffusion.training.batch_feed as batch_feed

    data = tmp_path / "me"
    shutil.copytree(style_folder, data)
    drawn, weights = [], []
    real_make, real_batch = class_images.make_class_images, batch_feed.MicroBatch

    def counting(pipe, cfg, *args):
        from lora_diffusion.lora.inject import lora_layers

        assert not lora_layers(pipe.unet)  # the base as it is: no LoRA yet
        before = set(class_images.class_image_folder(cfg).glob("*.png"))
        folder = real_make(pipe, cfg, *args)
        drawn.append(len(set(folder.glob("*.png")) - before))
        return folder

    monkeypatch.setattr(class_images, "make_class_images", counting)
    monkeypatch.setattr(batch_feed, "MicroBatch", lambda *a: weights.append(a[5].tolist()) or real_batch(*a))
    common = dict(base=tiny_base, data=str(data), resolution=32, steps=4, batch_size=2, reg_generate=3,
                  class_prompt="a photo of a square", prior_loss_weight=0.5, validation_steps=2)
    train(TrainConfig(output=str(tmp_path / "a.safetensors"), **common), progress=False)
    train(TrainConfig(output=str(tmp_path / "b.safetensors"), **common), progress=False)
    folder = class_images.class_image_folder(TrainConfig(output="o.safetensors", **common))
    assert folder.parent == tmp_path / "me-class-images"
    assert drawn == [3, 0]  # made once, found the second time
    assert sorted(p.name for p in folder.glob("*.txt")) == ["00000.txt", "00001.txt", "00002.txt"]
    assert (folder / "00000.txt").read_text() == "a photo of a square\n"
    assert 0.5 in {v for w in weights for v in w}
    with pytest.raises(UserError, match="^--reg-generate needs --class-prompt"):
        TrainConfig(data="d", output="o.safetensors", reg_generate=2).validate()


def test_a_killed_run_with_subsets_and_class_images_resumes_bit_identical(tmp_path, folders, tiny_base):
    from conftest import assert_kill_and_resume_is_bit_identical

    path = tmp_path / "dataset.toml"
    path.write_text(KOHYA_TOML.format(**{k: str(v) for k, v in folders.items()}))
    assert_kill_and_resume_is_bit_identical(
        ["--base", tiny_base, "--dataset-config", str(path), "--steps", "6", "--lr", "5e-3", "--seed", "4",
         "--checkpoint-every", "3", "--prior-loss-weight", "0.3", "--ema-decay", "0.8", "--quiet"], tmp_path)
