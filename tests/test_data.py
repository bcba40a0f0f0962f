"""Image folders → examples → samples: captions, repeats, metadata, image modes, buckets."""

import json

import numpy as np
import pytest
from PIL import Image

from lora_diffusion import UserError
from lora_diffusion.data.dataset import TrainingData, process_caption
from lora_diffusion.data.folder import scan_folder
from lora_diffusion.data.images import open_rgb


def _img(path, color=(200, 30, 30), size=(32, 32), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).convert(mode).save(path)
    return path


def test_captions_repeats_nested_and_trigger(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a red square\n")
    _img(tmp_path / "10_style" / "b.jpg")
    (tmp_path / "10_style" / "b.txt").write_bytes(b"bad \xff utf8")
    _img(tmp_path / "nested" / "deep" / "c.webp")
    scan = scan_folder(tmp_path, caption="", trigger_word="")
    got = {p.split("/")[-1]: (c, r) for p, c, r in [(e.path, e.caption, e.repeats) for e in scan.examples]}
    assert got == {"a.png": ("a red square", 1), "b.jpg": ("bad \ufffd utf8", 10)}
    assert [s[0].endswith("c.webp") for s in scan.skipped] == [True]
    assert "no caption" in scan.skipped[0][1] and "--caption or --trigger-word" in scan.skipped[0][1]
    scan = scan_folder(tmp_path, caption="default", trigger_word="zkw")
    captions = sorted(e.caption for e in scan.examples)
    assert captions == ["zkw, a red square", "zkw, bad \ufffd utf8", "zkw, default"]


def test_metadata_jsonl_and_csv(tmp_path):
    _img(tmp_path / "x.png")
    _img(tmp_path / "y.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "x.png", "text": "from jsonl"}) + "\n")
    (tmp_path / "y.txt").write_text("from txt")
    scan = scan_folder(tmp_path)
    assert sorted(e.caption for e in scan.examples) == ["from jsonl", "from txt"]
    other = tmp_path / "csv"
    _img(other / "z.png")
    (other / "metadata.csv").write_text("file_name,text\nz.png,from csv\n")
    assert [e.caption for e in scan_folder(other).examples] == ["from csv"]
    (tmp_path / "metadata.jsonl").write_text("{broken\n")
    with pytest.raises(UserError, match="metadata.jsonl line 1 is not valid JSON"):
        scan_folder(tmp_path)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "CMYK", "I;16"])
def test_every_image_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / ("i.tif" if mode in ("CMYK", "I;16") else "i.png")
    if mode == "I;16":
        Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(path)
    elif mode == "RGBA":
        Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)  # fully transparent red
    else:
        _img(path, size=(8, 8), mode=mode)
    image = open_rgb(path)
    assert image.mode == "RGB" and image.size == (8, 8)
    if mode == "RGBA":
        assert image.getpixel((0, 0)) == (255, 255, 255)  # composited on white
    if mode == "I;16":
        assert image.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    image.save(tmp_path / "r.jpg", exif=exif)
    assert open_rgb(tmp_path / "r.jpg").size == (20, 40)


def test_samples_are_deterministic_and_bucketed(tmp_path):
    _img(tmp_path / "wide.png", size=(96, 48))
    _img(tmp_path / "tall.png", size=(48, 96))
    _img(tmp_path / "square.png", size=(64, 64))
    examples = scan_folder(tmp_path, caption="c").examples
    data = TrainingData(examples, 64, bucketing=True, crop="random", flip=True, seed=3)
    sizes = {e.path.split("/")[-1]: data.sizes[i] for i, e in enumerate(data.items)}
    assert sizes["wide.png"][0] > sizes["wide.png"][1] and sizes["tall.png"][0] < sizes["tall.png"][1]
    assert sizes["square.png"] == (64, 64)
    for batch in data.batches(0, 2):
        assert len({data.sizes[i] for i in batch}) == 1
    wide = [i for i, e in enumerate(data.items) if e.path.endswith("wide.png")][0]
    assert data.pixels(wide, 1).shape == (3, sizes["wide.png"][1], sizes["wide.png"][0])
    assert data.pixels(wide, 1).equal(data.pixels(wide, 1))
    assert data.batches(4, 2) == data.batches(4, 2)


def test_caption_shuffle_keeps_leading_tokens_and_dropout():
    import random

    text = "trigger, a, b, c, d, e"
    outs = {process_caption(text, random.Random(s), True, 1, 0.0) for s in range(30)}
    assert all(o.startswith("trigger, ") for o in outs) and len(outs) > 5
    assert all(sorted(o.split(", ")) == sorted(text.split(", ")) for o in outs)
    assert process_caption(text, random.Random(0), False, 1, 0.999) == ""


def test_folder_without_usable_images_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="no usable images in the data folder"):
        TrainingData(scan_folder(tmp_path).examples, 64)
    with pytest.raises(UserError, match="data folder not found"):
        scan_folder(tmp_path / "missing")


def test_prefetcher_returns_what_make_returns_and_makes_each_wanted_key_once():
    import threading

    import torch

    from lora_diffusion.data.prefetch import Prefetcher

    calls, lock = [], threading.Lock()

    def make(key):
        with lock:
            calls.append(key)
        return torch.full((2,), float(key[0] * 10 + key[1]))

    prefetch = Prefetcher(make, workers=2)
    prefetch.want([(1, 0), (2, 0), (1, 0)])
    assert torch.equal(prefetch.get((2, 0)), torch.tensor([20.0, 20.0]))
    assert torch.equal(prefetch.get((1, 0)), torch.tensor([10.0, 10.0]))
    assert torch.equal(prefetch.get((3, 1)), torch.tensor([31.0, 31.0]))  # not wanted: made on the spot
    prefetch.close()
    assert sorted(calls) == [(1, 0), (2, 0), (3, 1)]
