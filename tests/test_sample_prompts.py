"""Samples during training the kohya way (issue 33 item 5): kohya's prompt-file options, and images of the stated
sizes and seeds, saved with A1111 parameters, every N steps and after the last."""

import pytest
from PIL import Image

from lora_diffusion.errors import UserError
from lora_diffusion.generation.params import read_png_params
from lora_diffusion.training.config import TrainConfig
from lora_diffusion.training.sample_prompts import SamplePrompt, parse_sample_prompts
from lora_diffusion.training.trainer import train

KOHYA_FILE = """# prompt 1
masterpiece, best quality, 1girl, in white shirts, upper body, looking at viewer, simple background --n low quality, worst quality, bad anatomy,bad composition, poor, low effort --w 768 --h 768 --d 1 --l 7.5 --s 28

# prompt 2
masterpiece, best quality, 1boy, in business suit, standing at street, looking back --n low quality --w 576 --h 832 --d 2 --l 5.5 --s 40
a plain prompt
"""


def test_kohyas_documented_prompt_file_parses_with_every_option(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(KOHYA_FILE)  # laid out as sd-scripts' docs show it
    first, second, plain = parse_sample_prompts(path, size=512, steps=20, seed=100, cfg_scale=5.0)
    assert first == SamplePrompt("masterpiece, best quality, 1girl, in white shirts, upper body, looking at viewer, "
                                 "simple background", "low quality, worst quality, bad anatomy,bad composition, poor, "
                                 "low effort", 768, 768, 1, 7.5, 28)
    assert (second.width, second.height, second.seed, second.cfg_scale, second.steps) == (576, 832, 2, 5.5, 40)
    assert plain == SamplePrompt("a plain prompt", "", 512, 512, 102, 5.0, 20)  # the run's values; seed + index


@pytest.mark.parametrize("line, message", [
    ("a cat --w wide", r"^prompts\.txt line 1: --w 'wide' is not a number$"),
    ("a cat --w 99999", r"^prompts\.txt line 1: size 99999x512 must be 8\.\.4096 px a side$"),
    ("a cat --s 0", r"^prompts\.txt line 1: --s 0 steps must be 1\.\.1000$"),
    ("a cat --x 3", r"^prompts\.txt line 1: unknown option --x 3; kohya's options are --n negative"),
    ("# only a comment", r"^--sample-prompts .*prompts\.txt: no prompt in it"),
])
def test_a_wrong_line_is_one_error_naming_it(tmp_path, line, message):
    path = tmp_path / "prompts.txt"
    path.write_text(line + "\n")
    with pytest.raises(UserError, match=message):
        parse_sample_prompts(path, size=512, steps=20, seed=0, cfg_scale=5.0)


def test_training_samples_each_prompt_at_its_size_and_seed_with_a1111_parameters(tiny_base, style_folder, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square --w 48 --h 32 --d 7 --s 3 --l 2\na blue square --n green --s 2\n")
    cfg = TrainConfig(base=tiny_base, data=style_folder, output=str(tmp_path / "a.safetensors"), resolution=32,
                      steps=4, batch_size=2, seed=1, sample_prompts=str(prompts), sample_every=2)
    train(cfg, progress=False)
    samples = tmp_path / "a-logs" / "samples"
    assert sorted(p.name for p in samples.glob("*.png")) == [
        "step_000002-00.png", "step_000002-01.png", "step_000004-00.png", "step_000004-01.png"]
    assert Image.open(samples / "step_000004-00.png").size == (48, 32)
    assert Image.open(samples / "step_000004-01.png").size == (32, 32)  # the run's size
    first, second = read_png_params(samples / "step_000004-00.png"), read_png_params(samples / "step_000004-01.png")
    assert (first.prompt, first.seed, first.steps, first.cfg_scale, first.width, first.height) == (
        "a red square", 7, 3, 2.0, 48, 32)
    assert (second.negative_prompt, second.seed, second.steps, first.loras) == ("green", 2, 2, [("a", 1.0)])


def test_a_missing_prompt_file_stops_before_any_model_loads(tmp_path, style_folder, monkeypatch):
    import lora_diffusion.training.run_setup as run_setup

    monkeypatch.setattr(run_setup, "load_pipeline", lambda *a, **k: pytest.fail("the base was loaded"))
    cfg = TrainConfig(data=style_folder, output=str(tmp_path / "a.safetensors"), sample_prompts=str(tmp_path / "no.txt"))
    with pytest.raises(UserError, match=r"^--sample-prompts .*no\.txt: no such file"):
        train(cfg, progress=False)
