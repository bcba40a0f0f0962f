"""`lora-diffusion caption` (issue 34): a vision-language model writes a caption beside each image that has none,
with the guides' options applied, existing captions kept, stopped runs resumed; tested on a tiny random BLIP built
from a config (no download)."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from lora_diffusion.cli.main import main
from lora_diffusion.data.captioning import CaptionOptions, caption_folder, finish_caption, images_to_caption
from lora_diffusion.errors import UserError

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "square", "circle", "on", "white",
         "background", "photo", "of", "man", "dog"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    """A BLIP captioner of 32-wide layers whose decoder always says "red" (its output bias makes it so)."""
    from transformers import (BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    folder = tmp_path_factory.mktemp("blip")
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(WORDS)}, do_lower_case=True)
    tokenizer.bos_token = "[CLS]"
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = BlipConfig(text_config=dict(vocab_size=len(WORDS), max_position_embeddings=128, bos_token_id=2,
                                         sep_token_id=3, pad_token_id=0, **layers),
                        vision_config=dict(image_size=32, patch_size=8, **layers), projection_dim=32)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[WORDS.index("red")] = 1e4
    model.save_pretrained(folder)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i, where in enumerate([folder, folder, folder / "nested"]):
        Image.new("RGB", (40, 30), (50 * i, 100, 150)).save(where / f"{i}.png")
    Image.new("L", (40, 30), 255).save(folder / "masks" / "0.png")  # a mask, not an image to caption
    (folder / "1.txt").write_text("my own caption\n")
    return folder


def test_the_model_captions_what_has_no_caption_with_the_options_applied(tiny_blip, images, capsys):
    assert main(["caption", str(images), "--model", tiny_blip, "--trigger-word", "sks", "--suffix", "in sks style",
                 "--max-length", "3", "--quiet"]) == 0
    assert (images / "0.txt").read_text() == "sks, red red red in sks style\n"
    assert (images / "nested" / "2.txt").read_text() == "sks, red red red in sks style\n"
    assert (images / "1.txt").read_text() == "my own caption\n"  # kept without --overwrite
    assert not (images / "masks" / "0.txt").exists()
    assert "wrote 2 captions (short) with" in capsys.readouterr().out
    # resumed: nothing left to do; --overwrite redoes all three
    assert main(["caption", str(images), "--model", tiny_blip, "--quiet"]) == 0
    assert "0 images to caption, 3 already captioned" in capsys.readouterr().err
    assert main(["caption", str(images), "--model", tiny_blip, "--max-length", "2", "--overwrite", "--quiet"]) == 0
    assert (images / "1.txt").read_text() == "red red\n"


def test_a_dry_run_lists_and_loads_no_model(images, capsys, monkeypatch):
    import lora_diffusion.data.captioner as captioner

    monkeypatch.setattr(captioner, "load_captioner", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["caption", str(images), "--dry-run"]) == 0
    out = capsys.readouterr()
    assert out.out.split() == [str(images / "0.png"), str(images / "nested" / "2.png")]
    assert "2 images to caption, 1 already captioned" in out.err


def test_a_stopped_run_keeps_what_it_wrote_and_resumes(images):
    options = CaptionOptions()
    todo, _ = images_to_caption(images, options)
    calls = []

    def caption(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return ["a photo"] * len(batch)

    with pytest.raises(KeyboardInterrupt):
        caption_folder(todo, caption, options, batch_size=1, progress=False)
    assert (images / "0.txt").read_text() == "a photo\n"
    todo, kept = images_to_caption(images, options)
    assert todo == [images / "nested" / "2.png"] and len(kept) == 2


def test_blacklist_replacements_prefix_and_trigger_word():
    options = CaptionOptions(trigger_word="sks", prefix="a photo of", blacklist=["solo", "simple background"],
                             replace=[("1girl", "sks girl"), ("man", "sks man")])
    assert finish_caption("1girl, solo, man, simple background, manga", options) == \
        "sks, a photo of sks girl, sks man, manga"  # whole words only: "manga" stays
    assert finish_caption("sks, a red square", CaptionOptions(trigger_word="sks")) == "sks, a red square"


def test_no_cached_model_offline_is_one_line_naming_what_to_fetch(monkeypatch):
    from lora_diffusion.data.captioner import load_captioner

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"^captioner 'someone/not-cached-captioner' is not on this machine and cannot "
                                        r"be downloaded now .*; fetch it once with `hf download "
                                        r"someone/not-cached-captioner`"):
        load_captioner("someone/not-cached-captioner")


def test_long_captions_for_the_t5_bases():
    from lora_diffusion.data.captioner import detail_for

    assert [detail_for(f) for f in ("flux", "sd3", "sdxl", "sd1", None)] == ["long", "long", "short", "short", "short"]


def test_train_auto_caption_trains_on_a_bare_folder(tiny_blip, tiny_base, tmp_path):
    from lora_diffusion.training.config import TrainConfig
    from lora_diffusion.training.trainer import train

    bare = tmp_path / "bare"
    bare.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (80 * i, 40, 200)).save(bare / f"{i}.png")
    cfg = TrainConfig(base=tiny_base, data=str(bare), output=str(tmp_path / "a.safetensors"), resolution=32, steps=2,
                      batch_size=2, auto_caption=True, caption_model=tiny_blip)
    result = train(cfg, progress=False)
    assert result.steps == 2 and not result.skipped
    assert sorted(p.name for p in bare.glob("*.txt")) == ["0.txt", "1.txt", "2.txt"]
    assert (bare / "0.txt").read_text().startswith("red red")


TAGS = [("9999", "general", "9"), ("1", "red_theme", "0"), ("2", "blue_theme", "0"), ("3", "simple_background", "0"),
        ("4", "hatsune_miku", "4")]


@pytest.fixture(scope="module")
def tiny_tagger(tmp_path_factory):
    """A WD14-layout tagger (16 px NHWC BGR input, sigmoid scores; model.onnx + selected_tags.csv): the channel
    means decide the scores, so a red image is tagged red_theme and a blue one blue_theme."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path_factory.mktemp("tagger")
    # columns: rating, red_theme, blue_theme, simple_background, hatsune_miku; inputs are B, G, R means (0-255)
    weights = np.array([[0, -0.1, 0.1, 0.005, -1], [0, 0, 0, 0.005, -1], [0, 0.1, -0.1, 0.005, -1]], np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input_1:0", "axes"], ["mean"], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"])],
        "tiny_wd14", [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["batch", 16, 16, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", len(TAGS)])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array([1, 2], np.int64), "axes")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(folder / "model.onnx"))
    rows = ["tag_id,name,category,count"] + [f"{i},{n},{c},100" for i, n, c in TAGS]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n")
    return str(folder)


def test_tags_from_a_wd14_tagger_with_thresholds_and_options(tiny_tagger, tmp_path, capsys):
    folder = tmp_path / "anime"
    folder.mkdir()
    Image.new("RGB", (20, 12), (230, 20, 20)).save(folder / "red.png")
    Image.new("RGB", (20, 12), (20, 20, 230)).save(folder / "blue.png")
    assert main(["caption", str(folder), "--tags", "--model", tiny_tagger, "--trigger-word", "sks",
                 "--blacklist", "simple background", "--quiet"]) == 0
    assert (folder / "red.txt").read_text() == "sks, red theme\n"  # no rating tag, no character under 0.85
    assert (folder / "blue.txt").read_text() == "sks, blue theme\n"
    assert main(["caption", str(folder), "--tags", "--model", tiny_tagger, "--overwrite", "--threshold", "0.99",
                 "--quiet"]) == 0
    assert (folder / "red.txt").read_text() == "red theme\n"  # sigmoid(0.1 × 210) ≥ 0.99; simple background 0.91 (white padding counts)
    assert "wrote 2 captions (tags)" in capsys.readouterr().out


def test_a_tagger_folder_without_its_tag_list_is_one_line(tiny_tagger, tmp_path):
    from lora_diffusion.data.tagger import load_tagger

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes((Path(tiny_tagger) / "model.onnx").read_bytes())
    with pytest.raises(UserError, match=r"^tagger folder .* has no selected_tags\.csv; a WD14 tagger folder holds "
                                        r"model\.onnx and selected_tags\.csv$"):
        load_tagger(str(broken))
