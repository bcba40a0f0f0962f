"""Bad inputs, crashes and untrusted files: nothing lost, nothing executed, clear errors."""

import errno
import json
import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lora_diffusion import UserError, read_adapter
from lora_diffusion.cli.main import main
from lora_diffusion.training.config import TrainConfig
from lora_diffusion.training.trainer import train


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    for i in range(4):
        image = Image.new("RGB", (32, 32), (230, 210, 170))
        image.paste((40 * i, 200, 40), (8, 8, 24, 24))
        image.save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"a square number {i}")
    return str(root)


def _cfg(base, data, out, **extra):
    values = dict(base=base, data=data, output=str(out), resolution=32, steps=6, batch_size=2, seed=1)
    values.update(extra)
    return TrainConfig(**values)


# ---- crash safety -------------------------------------------------------------------------------
def test_disk_full_while_saving_keeps_the_previous_adapter(tmp_path, monkeypatch, tiny_base, folder):
    import lora_diffusion.adapters.file as file_module

    out = tmp_path / "style.safetensors"
    train(_cfg(tiny_base, folder, out, steps=2), progress=False)
    before = out.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(file_module, "save_file", full_disk)
    with pytest.raises(UserError, match=r"could not write .*style.safetensors \(No space left on device\); any earlier file there is unchanged"):
        train(_cfg(tiny_base, folder, out, steps=3), progress=False)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_disk_full_while_checkpointing_keeps_earlier_checkpoints(tmp_path, monkeypatch, tiny_base, folder):
    import lora_diffusion.training.checkpoint as checkpoint

    real = checkpoint.save_file
    calls = []

    def full_on_second(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", full_on_second)
    with pytest.raises(UserError, match="could not write checkpoint .*earlier checkpoints are unchanged"):
        train(_cfg(tiny_base, folder, tmp_path / "s.safetensors", checkpoint_every=2), progress=False)
    kept = sorted(p.name for p in (tmp_path / "s-checkpoints").iterdir())
    assert kept == ["checkpoint-000002"]
    assert load_file(str(tmp_path / "s-checkpoints" / "checkpoint-000002" / "lora.safetensors"))


def test_ctrl_c_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path, tiny_base, folder, capsys):
    full = train(_cfg(tiny_base, folder, tmp_path / "full.safetensors"), progress=False)

    def interrupt(record):
        if record["step"] == 3:
            raise KeyboardInterrupt

    out = tmp_path / "cut.safetensors"
    with pytest.raises(KeyboardInterrupt) as caught:
        train(_cfg(tiny_base, folder, out), progress=False, on_step=interrupt)
    partial = tmp_path / "cut-partial-step000003.safetensors"
    assert str(caught.value) == (
        f"interrupted after step 3 of 6: wrote the partial LoRA {partial} and the checkpoint "
        f"{tmp_path / 'cut-checkpoints' / 'checkpoint-000003'}; continue with --resume latest")
    assert (tmp_path / "cut-checkpoints" / "checkpoint-000003").is_dir() and not out.exists()
    # the partial LoRA is a normal adapter file holding the first 3 steps
    assert read_adapter(partial).metadata["ss_steps"] == "3"
    train(_cfg(tiny_base, folder, out, resume="latest"), progress=False)
    a, b = load_file(str(full.output)), load_file(str(out))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---- numerical guards ---------------------------------------------------------------------------
def _nan_at(monkeypatch, calls_with_nan):
    import lora_diffusion.training.objective as objective

    real, count = objective.denoising_loss, [0]

    def loss(*args, **kwargs):
        count[0] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if count[0] in calls_with_nan else value

    monkeypatch.setattr(objective, "denoising_loss", loss)


def test_nan_step_is_skipped_and_counted(tmp_path, monkeypatch, tiny_base, folder, capsys):
    _nan_at(monkeypatch, {3})
    result = train(_cfg(tiny_base, folder, tmp_path / "n.safetensors"), progress=False)
    assert result.skipped_steps == 1 and len(result.losses) == 5 and all(np.isfinite(result.losses))
    assert "warning: step 3: NaN/inf loss or gradient; update skipped" in capsys.readouterr().err
    weights = load_file(str(result.output))
    assert all(torch.isfinite(t.float()).all() for t in weights.values())
    log = [json.loads(line) for line in (tmp_path / "n-logs" / "train_log.jsonl").read_text().splitlines()]
    assert {"step": 3, "loss": None, "skipped": "non-finite loss or gradient"} in log


def test_nan_with_stop_policy_stops_clearly_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, tiny_base, folder):
    _nan_at(monkeypatch, {5})
    with pytest.raises(UserError, match="NaN/inf at step 5; stopped \\(the last checkpoint is kept\\)"):
        train(_cfg(tiny_base, folder, tmp_path / "n.safetensors", nan_policy="stop", checkpoint_every=2), progress=False)
    kept = sorted(p.name for p in (tmp_path / "n-checkpoints").iterdir())
    assert kept == ["checkpoint-000002", "checkpoint-000004"]
    assert not (tmp_path / "n.safetensors").exists()


def test_too_many_bad_steps_in_a_row_stop_the_run(tmp_path, monkeypatch, tiny_base, folder):
    _nan_at(monkeypatch, {2, 3, 4})
    with pytest.raises(UserError, match="for 3 steps in a row"):
        train(_cfg(tiny_base, folder, tmp_path / "n.safetensors", max_bad_steps=3), progress=False)


# ---- untrusted files ----------------------------------------------------------------------------
def _raw_safetensors(path, header: bytes, data: bytes = b"", length: int | None = None):
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


@pytest.mark.parametrize("kind", ["huge-header-length", "not-json", "unknown-dtype", "shape-vs-data",
                                  "absurd-shape", "overlapping-offsets", "truncated", "empty"])
def test_malformed_safetensors_give_one_clear_error(tmp_path, kind, capsys):
    header = {"lora_unet_x.lora_down.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    path = tmp_path / "bad.safetensors"
    if kind == "huge-header-length":
        _raw_safetensors(path, b"{}", length=2**62)
    elif kind == "not-json":
        _raw_safetensors(path, b"{this is not json}")
    elif kind == "unknown-dtype":
        header["lora_unet_x.lora_down.weight"]["dtype"] = "X99"
        _raw_safetensors(path, json.dumps(header).encode(), b"\0" * 16)
    elif kind == "shape-vs-data":
        header["lora_unet_x.lora_down.weight"]["shape"] = [4, 4]
        _raw_safetensors(path, json.dumps(header).encode(), b"\0" * 16)
    elif kind == "absurd-shape":
        header["lora_unet_x.lora_down.weight"]["shape"] = [2**40, 2**20]
        _raw_safetensors(path, json.dumps(header).encode(), b"\0" * 16)
    elif kind == "overlapping-offsets":
        header["lora_unet_x.lora_up.weight"] = {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]}
        _raw_safetensors(path, json.dumps(header).encode(), b"\0" * 24)
    elif kind == "truncated":
        _raw_safetensors(path, json.dumps(header).encode(), b"\0" * 5)
    else:
        path.write_bytes(b"")
    with pytest.raises(UserError, match="cannot read LoRA file .*bad.safetensors"):
        read_adapter(path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


# ---- messy folders: a seeded fuzz ----------------------------------------------------------------
def _png_bytes(rng, size=(24, 24), mode="RGB"):
    import io

    image = Image.new(mode, size, tuple(rng.randrange(256) for _ in range(len(mode))) if mode not in ("P", "I;16") else 7)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_fuzz_folder(root: Path, seed: int, count: int) -> dict[str, int]:
    """``count`` files of every kind a real folder holds; returns how many of each were written."""
    import io

    rng = random.Random(seed)
    kinds: dict[str, int] = {}
    good = _png_bytes(rng)
    bomb = bytearray(good)
    bomb[16:24] = struct.pack(">II", 60000, 60000)  # IHDR width/height: a decompression bomb by declaration
    bomb[29:33] = struct.pack(">I", zlib.crc32(bytes(bomb[12:29])))  # with a valid chunk checksum
    for i in range(count):
        kind = rng.choice(["good", "good", "truncated", "zero", "random-bytes", "text-as-jpg", "bomb", "tiny",
                           "gif", "webp-anim", "16bit", "cmyk", "palette", "la", "exif", "bad-utf8-caption",
                           "empty-caption", "no-caption", "unicode-name", "two-extensions"])
        kinds[kind] = kinds.get(kind, 0) + 1
        name = f"{i:04d}"
        caption = f"fuzz image {i}"
        path = root / f"{name}.png"
        if kind == "good":
            path.write_bytes(_png_bytes(rng))
        elif kind == "truncated":
            path.write_bytes(good[: rng.randrange(45, 70)])  # cut inside the compressed image data
        elif kind == "zero":
            path.write_bytes(b"")
        elif kind == "random-bytes":
            path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
        elif kind == "text-as-jpg":
            path = root / f"{name}.jpg"
            path.write_text("this is not a jpeg")
        elif kind == "bomb":
            path.write_bytes(bytes(bomb))
        elif kind == "tiny":
            path.write_bytes(_png_bytes(rng, size=(2, 3)))
        elif kind in ("gif", "webp-anim"):
            path = root / f"{name}.{'gif' if kind == 'gif' else 'webp'}"
            frames = [Image.new("RGB", (20, 20), (rng.randrange(256), 0, 0)) for _ in range(3)]
            frames[0].save(path, save_all=True, append_images=frames[1:], format="GIF" if kind == "gif" else "WEBP")
        elif kind == "16bit":
            Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(path)
        elif kind == "cmyk":
            path = root / f"{name}.jpg"
            Image.new("CMYK", (20, 20), (10, 200, 30, 0)).save(path, format="JPEG")
        elif kind in ("palette", "la"):
            Image.new("P" if kind == "palette" else "LA", (20, 20)).save(path)
        elif kind == "exif":
            path = root / f"{name}.jpg"
            image, exif = Image.new("RGB", (30, 20), (0, 0, 255)), Image.Exif()
            exif[0x0112] = 6
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", exif=exif)
            path.write_bytes(buffer.getvalue())
        elif kind == "unicode-name":
            path = root / f"{name}-ümlaut-画像.png"
            path.write_bytes(_png_bytes(rng))
        elif kind == "two-extensions":
            path.write_bytes(_png_bytes(rng))
            (root / f"{name}.jpg").write_bytes(_png_bytes(rng))  # a PNG under .jpg: opened by content
        if kind == "bad-utf8-caption":
            path.write_bytes(_png_bytes(rng))
            path.with_suffix(".txt").write_bytes(b"caf\xe9 \xff\xfe broken")
        elif kind == "empty-caption":
            path.write_bytes(_png_bytes(rng))
            path.with_suffix(".txt").write_text("   ")
        elif kind == "no-caption":
            path.write_bytes(_png_bytes(rng))
        else:
            path.with_suffix(".txt").write_text(caption)
    return kinds


def test_seeded_fuzz_folder_trains_and_counts_every_bad_file(tmp_path, tiny_base, capsys):
    from lora_diffusion.data.dataset import TrainingData
    from lora_diffusion.data.folder import scan_folder

    data = tmp_path / "fuzz"
    data.mkdir()
    kinds = _write_fuzz_folder(data, seed=1234, count=300)
    assert len(kinds) >= 18 and sum(kinds.values()) == 300
    scan = scan_folder(data)
    # no caption from any source: skipped at scan time, each with its reason
    assert sum("no caption" in why for _, why in scan.skipped) == kinds["no-caption"] + kinds["empty-caption"]
    # broken files are named at scan time too, from their headers, before any model loads (not as "no caption")
    broken = kinds["truncated"] + kinds["zero"] + kinds["random-bytes"] + kinds["text-as-jpg"] + kinds["bomb"]
    unusable = [why for _, why in scan.skipped if "no caption" not in why]
    assert len(unusable) == broken
    reasons = " | ".join(unusable)
    assert "decompression bomb" in reasons or "too large" in reasons
    assert "not a readable image" in reasons
    # every remaining file opens: each becomes an RGB sample
    dataset = TrainingData(scan.examples, 32, skipped=scan.skipped)
    for index in range(len(dataset.items)):
        assert dataset.pixels(index, 0).shape == (3, 32, 32)
    assert dataset.bad == {}
    # and a short training run on the whole mess finishes, recording the count in the adapter
    out = tmp_path / "fuzz.safetensors"
    assert main(["train", "--data", str(data), "--output", str(out), "--base", tiny_base, "--steps", "4",
                 "--batch-size", "4", "--resolution", "32", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "files skipped" in printed.out and "skipped files:" in printed.out
    assert printed.err.count("warning: skipping") >= 1
    summary = json.loads(read_adapter(out).metadata["lora_diffusion.dataset"])
    assert summary["skipped"] >= kinds["no-caption"] + kinds["empty-caption"]


def test_large_folder_is_scanned_from_headers_without_decoding_any_pixels(tmp_path, monkeypatch):
    import PIL.ImageFile

    from lora_diffusion.data.folder import scan_folder

    png = _png_bytes(random.Random(0))
    for i in range(10_000):
        (tmp_path / f"{i:05d}.png").write_bytes(png)
    decoded = []
    real_load = PIL.ImageFile.ImageFile.load
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", lambda self: decoded.append(self) or real_load(self))
    scan = scan_folder(tmp_path, caption="x")
    assert len(scan.examples) == 10_000 and decoded == []


def test_broken_images_are_named_before_the_base_loads(tmp_path, capsys, monkeypatch):
    """A non-image named .png and a JPEG cut short are reported for what they are, before any model loads."""
    import io

    import lora_diffusion.models.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the base loaded"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.png").write_text("shopping list")
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    (data / "cut.jpg").write_bytes(jpeg.getvalue()[:-2000])
    (data / "cut.txt").write_text("a red square")
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "o.safetensors"), "--caption", "x"]) == 2
    err = capsys.readouterr().err
    assert f"warning: skipping {data / 'cut.jpg'}: a JPEG cut short (no end-of-image marker; a partial download?)" in err
    assert f"warning: skipping {data / 'notes.png'}: not a readable image (no image format PIL knows in its header)" in err
    assert err.strip().splitlines()[-1].startswith("error: no usable images in the data folder (")


def test_empty_and_all_bad_folders_stop_with_a_clear_message(tmp_path, tiny_base, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--data", str(empty), "--output", str(tmp_path / "o.safetensors"), "--base", tiny_base]) == 2
    assert "no usable images in the data folder" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"not an image")
    assert main(["train", "--data", str(bad), "--output", str(tmp_path / "o.safetensors"), "--base", tiny_base,
                 "--caption", "x", "--steps", "2", "--resolution", "32"]) == 2
    err = capsys.readouterr().err
    assert f"no usable images in the data folder ({bad / '0.png'}: not a readable image" in err
    assert not (tmp_path / "o.safetensors").exists()


# ---- soak ---------------------------------------------------------------------------------------
@pytest.mark.slow  # 200 generations: CI runs it, the quick local suite does not
def test_soak_200_generations_with_random_loras_leaves_no_growth_and_exact_base(tmp_path, tiny_base):
    import gc
    import resource

    from lora_diffusion import LoraConfig, inject_adapter, lora_layers, pipeline_components, save_adapter
    from lora_diffusion.generation.engine import GenerationEngine, LoraChoice, base_key
    from lora_diffusion.lora.inject import base_modules
    from lora_diffusion.models.loading import load_pipeline

    files = []
    for i in range(5):
        comps = pipeline_components(load_pipeline(tiny_base))
        inject_adapter(comps["unet"], "x", LoraConfig(rank=4))
        inject_adapter(comps["te"], "x", LoraConfig(rank=4), kind="text")
        for model in comps.values():
            for layer in lora_layers(model).values():
                torch.nn.init.normal_(layer.lora_B["x"].weight, std=0.3)
        files.append(str(save_adapter(tmp_path / f"l{i}.safetensors", comps, "x")))
    engine = GenerationEngine(device="cpu")
    pipe = engine.pipeline(tiny_base)
    reference = {k: v.clone() for k, v in pipeline_components(load_pipeline(tiny_base))["unet"].state_dict().items()}
    rng = random.Random(7)
    rss = []
    for request in range(200):
        chosen = rng.sample(files, rng.randrange(0, 4))
        loras = [LoraChoice(f, round(rng.uniform(-1, 2), 2), rng.choice([None, round(rng.uniform(-1, 2), 2)])) for f in chosen]
        images = engine.generate("a red circle", base=tiny_base, loras=loras, seed=request, steps=1, width=32, height=32)
        assert len(images) == 1
        if request in (50, 199):
            gc.collect()
            rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            layers = lora_layers(pipe.unet)
            assert len(engine._adapters[base_key(tiny_base)]) <= 5 and all(len(layer.rank) <= 5 for layer in layers.values())
    assert rss[1] - rss[0] < 100_000  # KB: no growth beyond allocator noise between request 50 and 200
    engine.set_loras(tiny_base, [])
    for path, module in base_modules(pipe.unet):
        weight = module.weight
        assert torch.equal(weight, reference[path + ".weight"]), path
