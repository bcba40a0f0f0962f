"""Inputs a stranger can send cost bounded time and memory (issue 27): PNG text chunks, LyCORIS factor shapes."""

import time

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lora_diffusion.generation.params import GenerationParams, read_png_params, settings_values

# Each of these took the old backtracking parser quadratic time (60k characters: 41 s; 1M: hours).
HOSTILE_TEXTS = {
    "one long settings line": "a" * 1_000_000,
    "spaces before a tag": "p" + " " * 1_000_000 + "<lora:x:1>\nSteps: 3",
    "unclosed tags": "<lora:" * 170_000 + "\nSteps: 3",
    "keys without separators": "Steps: 3, " + "a b: " * 200_000,
    "an unclosed quoted value": 'Model: "' + '\\"' * 500_000,
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_TEXTS))
def test_a_million_hostile_characters_parse_in_linear_time(kind):
    start = time.perf_counter()
    params = GenerationParams.from_text(HOSTILE_TEXTS[kind])
    elapsed = time.perf_counter() - start
    # a guard against the quadratic blow-up (hours), not a speed target: linear parsing takes milliseconds
    assert elapsed < 5, f"{kind}: {elapsed:.1f} s"
    assert params.loras == ([("x", 1.0)] if kind == "spaces before a tag" else [])


def test_settings_line_reads_a1111_values_with_quotes_commas_and_stray_words():
    line = ('Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 64x64, Model: "a, b", '
            'Lora hashes: "x: 1, y: 2", odd/key: 3, Version: v1.6')
    assert settings_values(line) == {
        "Steps": "20", "Sampler": "DPM++ 2M", "CFG scale": "7", "Seed": "1", "Size": "64x64",
        "Model": '"a, b"', "Lora hashes": '"x: 1, y: 2"', "Version": "v1.6"}


def test_tags_and_the_spaces_before_them_leave_the_prompt():
    params = GenerationParams.from_text("a cat  <lora:sepia:0.5>, on a mat <lora:ink:-1>\nSteps: 3")
    assert params.prompt == "a cat, on a mat"
    assert params.loras == [("sepia", 0.5), ("ink", -1.0)]
    assert params.steps == 3


def test_a_model_name_with_quotes_and_commas_round_trips():
    params = GenerationParams(prompt="x", model='my, "odd" \\ model', loras=[("s", 0.25)])
    assert GenerationParams.from_text(params.to_text()) == params


def test_png_info_reads_the_text_chunk_without_decoding_pixels(tmp_path, monkeypatch):
    info = PngInfo()
    info.add_text("parameters", "a red circle <lora:sepia:0.7>\nSteps: 9, Seed: 4, Size: 64x64")
    path = tmp_path / "p.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded to read a text chunk")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    params = read_png_params(path)
    assert (params.prompt, params.loras, params.steps, params.seed) == ("a red circle", [("sepia", 0.7)], 9, 4)


def test_png_without_parameters_is_a_key_error(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(KeyError):
        read_png_params(path)


def _huge_lokr(path, module="lora_unet_conv_out", side=12000):
    """A 48 KB LoKr whose factors describe a side×side weight change (576 MB in fp32 at 12000)."""
    import torch
    from safetensors.torch import save_file

    save_file({f"{module}.lokr_w1": torch.ones(1, 1), f"{module}.lokr_w2_a": torch.ones(side, 1),
               f"{module}.lokr_w2_b": torch.ones(1, side), f"{module}.alpha": torch.tensor(1.0)}, str(path))
    return path


@pytest.fixture
def no_full_kron(monkeypatch):
    """Fail the test if any LoKr ΔW is built for real (only shape-only meta products are allowed)."""
    import torch

    real_kron = torch.kron

    def guarded(a, b, *args, **kwargs):
        assert a.is_meta and b.is_meta, "a LoKr weight change was built before its shape was checked"
        return real_kron(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "kron", guarded)


def test_a_lokr_too_big_for_its_layer_is_refused_before_its_delta_is_built(tmp_path, no_full_kron):
    from lora_diffusion import load_adapter, lora_layers, pipeline_components
    from lora_diffusion.errors import UserError
    from lora_diffusion.models.tiny import tiny_pipeline

    path = _huge_lokr(tmp_path / "lokr12k.safetensors")
    pipe = tiny_pipeline("sd1")
    with pytest.raises(UserError, match=r"module lora_unet_conv_out: its lokr factors make a weight change of shape "
                                        r"\(12000, 12000\) \(144M values\)"):
        load_adapter(path, pipeline_components(pipe))
    assert not lora_layers(pipe.unet)


def test_a_lokr_that_does_not_match_its_layer_is_refused_by_shape_alone(tmp_path, no_full_kron):
    from lora_diffusion import load_adapter, pipeline_components
    from lora_diffusion.errors import UserError
    from lora_diffusion.models.tiny import tiny_pipeline

    path = _huge_lokr(tmp_path / "lokr300.safetensors", side=300)
    with pytest.raises(UserError, match=r"module lora_unet_conv_out has a lokr weight change of shape \(300, 300\) "
                                        r"but the base layer is \(4, 32, 3, 3\)"):
        load_adapter(path, pipeline_components(tiny_pipeline("sd1")))


@pytest.mark.parametrize("command", ["resize", "merge"])
def test_resize_and_merge_refuse_an_oversized_lokr_in_one_line(tmp_path, capsys, command, no_full_kron):
    from lora_diffusion.cli.main import main

    path = _huge_lokr(tmp_path / "lokr12k.safetensors")
    out = tmp_path / "out.safetensors"
    args = [str(path), "--rank", "2"] if command == "resize" else [f"{path}:1", f"{path}:0.5"]
    assert main([command, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "its lokr factors make a weight change of shape (12000, 12000)" in err and "\n" not in err
    assert not out.exists()


# ---- LoRA files with odd values (item 10) ------------------------------------------------------------------------
MODULE = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def _lora_tensors(**changes):
    import torch

    tensors = {f"{MODULE}.lora_down.weight": torch.randn(4, 32), f"{MODULE}.lora_up.weight": torch.randn(32, 4),
               f"{MODULE}.alpha": torch.tensor(4.0)}
    tensors.update({f"{MODULE}.{k}": v for k, v in changes.items()})
    return tensors


def _odd_values():
    import torch

    return {
        "nan alpha": (_lora_tensors(alpha=torch.tensor(float("nan"))), f"tensor '{MODULE}.alpha' holds nan or inf"),
        "inf weight": (_lora_tensors(**{"lora_up.weight": torch.full((32, 4), float("inf"))}),
                       f"tensor '{MODULE}.lora_up.weight' holds nan or inf"),
        "int tensor": (_lora_tensors(**{"lora_up.weight": torch.ones(32, 4, dtype=torch.int64)}),
                       f"tensor '{MODULE}.lora_up.weight' is int64; LoRA tensors are floating point"),
        "bool tensor": (_lora_tensors(**{"lora_down.weight": torch.ones(4, 32, dtype=torch.bool)}),
                        f"tensor '{MODULE}.lora_down.weight' is bool"),
        "vector alpha": (_lora_tensors(alpha=torch.tensor([1.0, 2.0])), f"tensor '{MODULE}.alpha' has 2 values"),
        "rank 0": (_lora_tensors(**{"lora_down.weight": torch.zeros(0, 32), "lora_up.weight": torch.zeros(32, 0)}),
                   f"module {MODULE} has rank 0"),
        "negative alpha": (_lora_tensors(alpha=torch.tensor(-2.0)), f"module {MODULE} has alpha -2.0"),
    }


@pytest.mark.parametrize("case", sorted(_odd_values()))
def test_odd_values_in_a_lora_file_are_one_line_naming_the_tensor(tmp_path, case):
    from safetensors.torch import save_file

    from lora_diffusion import read_adapter
    from lora_diffusion.errors import UserError

    tensors, message = _odd_values()[case]
    path = tmp_path / "odd.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(UserError) as error:
        read_adapter(path)
    assert str(error.value).startswith(f"cannot read LoRA file {path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_an_integer_alpha_is_read_as_the_number_it_is(tmp_path):
    import torch
    from safetensors.torch import save_file

    from lora_diffusion import read_adapter

    save_file(_lora_tensors(alpha=torch.tensor(2, dtype=torch.int64)), str(tmp_path / "a.safetensors"))
    assert read_adapter(tmp_path / "a.safetensors").modules[MODULE].alpha == 2.0


@pytest.mark.parametrize("spec", ["good.safetensors:nan", "good.safetensors:inf", "good.safetensors:1:-inf"])
def test_non_finite_weights_are_refused_on_the_command_line(spec):
    from lora_diffusion.errors import UserError
    from lora_diffusion.generation.engine import LoraChoice

    with pytest.raises(UserError, match=r"weights must be finite numbers \(not nan or inf\)"):
        LoraChoice.parse(spec)


def test_non_finite_weights_are_refused_in_prompt_tags():
    from lora_diffusion.errors import UserError
    from lora_diffusion.generation.prompt_tags import split_lora_tags

    with pytest.raises(UserError, match=r"^prompt tag <lora:good:nan>: weights must be finite numbers"):
        split_lora_tags("a cat <lora:good:nan>")


# ---- library names, training starts, uploads (items 3, 5, 6) -----------------------------------------------------
def test_a_doubled_safetensors_suffix_is_refused_and_never_breaks_the_list(tmp_path):
    from lora_diffusion.errors import UserError
    from lora_diffusion.ui.library import LoraLibrary

    library = LoraLibrary(tmp_path)
    with pytest.raises(UserError, match=r"ends in \.safetensors twice; give the name once, e\.g\. 'x'"):
        library.check_name("x.safetensors.safetensors")
    (tmp_path / "y.safetensors.safetensors").write_bytes(b"made by hand")
    (tmp_path / "z.safetensors").write_bytes(b"")
    assert library.names() == ["z"]


def test_two_concurrent_training_starts_give_one_run_and_one_clear_refusal(tmp_path, monkeypatch):
    import threading
    import time

    from lora_diffusion.errors import UserError
    from lora_diffusion.training.config import TrainConfig
    from lora_diffusion.ui import jobs
    from lora_diffusion.ui.library import LoraLibrary

    def slow_copy(uploads, folder, target):  # the window the race used: copying a large upload
        time.sleep(0.5)
        target.mkdir(parents=True, exist_ok=True)
        return target

    runs = []
    monkeypatch.setattr(jobs, "prepare_data", slow_copy)
    monkeypatch.setattr(jobs, "preview_plan", lambda cfg: (None, ""))
    monkeypatch.setattr(jobs.TrainingJob, "_run", lambda self, cfg, final: runs.append(final) or time.sleep(0.2))
    monkeypatch.setattr(TrainConfig, "validate", lambda self: None)
    job = jobs.TrainingJob(LoraLibrary(tmp_path / "loras"))
    outcomes = []

    def start():
        try:
            job.start("style", TrainConfig(), ["x.png"], "")
            outcomes.append("started")
        except UserError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join()
    job.wait()
    assert sorted(outcomes) == ["a training run is already starting; wait for it or press Stop", "started"]
    assert len(runs) == 1


def test_a_zip_that_unpacks_far_larger_than_it_is_is_refused(tmp_path):
    import zipfile

    from lora_diffusion.errors import UserError
    from lora_diffusion.ui.jobs import prepare_data

    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.png", b"\0" * (40 * 1024**2))
    assert archive.stat().st_size < 100_000
    with pytest.raises(UserError, match=r"bomb.zip: unpacks \d+× larger than it is; that is not a zip of images"):
        prepare_data([str(archive)], "", tmp_path / "job" / "data")
    assert not any((tmp_path / "job" / "data").iterdir())


def test_uploaded_training_data_is_removed_after_the_run(tmp_path, monkeypatch):
    from lora_diffusion.training.config import TrainConfig
    from lora_diffusion.ui import jobs
    from lora_diffusion.ui.library import LoraLibrary

    def failing_train(cfg, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("lora_diffusion.training.trainer.train", failing_train)
    monkeypatch.setattr(TrainConfig, "validate", lambda self: None)
    monkeypatch.setattr(jobs, "preview_plan", lambda cfg: (None, ""))
    upload = tmp_path / "a.png"
    upload.write_bytes(b"\x89PNG")
    job = jobs.TrainingJob(LoraLibrary(tmp_path / "loras"))
    job.start("style", TrainConfig(), [str(upload)], "")
    job.wait()
    assert job.snapshot().status == "failed"
    assert not (tmp_path / "loras" / ".training-uploads" / "style").exists()
    assert not (tmp_path / "loras" / ".training" / "style" / "data").exists()


# ---- generation engine caches and exact blends (items 4, 12) ------------------------------------------------------
@pytest.fixture(scope="module")
def builtin_loras(tmp_path_factory):
    from ui_helpers import builtin_loras as make

    return make(tmp_path_factory.mktemp("hostile") / "loras")


def test_every_spelling_of_a_base_shares_one_pipeline_and_the_cache_is_bounded(tmp_path, monkeypatch):
    import os

    from lora_diffusion.generation import engine as engine_module
    from lora_diffusion.models.builtin import builtin_path

    loads = []
    monkeypatch.setattr(engine_module, "load_pipeline", lambda base, **kw: loads.append(base) or object())
    engine = engine_module.GenerationEngine(device="cpu")
    folder = builtin_path()
    spellings = ["builtin", str(folder), str(folder) + "/", str(folder / ".." / "model"),
                 os.path.relpath(folder), str(folder / "unet" / "..")]
    for spelling in spellings:
        engine.pipeline(spelling)
    assert loads == ["builtin"]
    for other in ("a", "b", "c"):
        (tmp_path / other).mkdir()
        engine.pipeline(str(tmp_path / other))
    assert len(engine._pipes) == engine.MAX_PIPELINES and len(engine._adapters) == engine.MAX_PIPELINES


def test_a_renamed_lora_is_not_loaded_again_and_a_deleted_one_is_dropped(tmp_path, builtin_loras, monkeypatch):
    import shutil

    from lora_diffusion import adapter_names
    from lora_diffusion.generation import engine as engine_module

    reads = []
    real_read = engine_module.read_adapter
    monkeypatch.setattr(engine_module, "read_adapter", lambda p: reads.append(p) or real_read(p))
    engine = engine_module.GenerationEngine(device="cpu")
    first = tmp_path / "one.safetensors"
    shutil.copyfile(builtin_loras / "bold.safetensors", first)
    choice = engine_module.LoraChoice
    engine.set_loras("builtin", [choice(str(first), 0.5)])
    renamed = first.rename(tmp_path / "two.safetensors")
    engine.set_loras("builtin", [choice(str(renamed), 0.5)])
    assert len(reads) == 1
    other = builtin_loras / "sepia-ish.safetensors"
    engine.set_loras("builtin", [choice(str(other), 1.0)])
    renamed.unlink()
    engine.set_loras("builtin", [choice(str(other), 1.0)])
    unet = engine.pipeline("builtin").unet
    assert len(adapter_names(unet)) == 1 and len(engine._adapters["builtin"]) == 1


def test_the_adapter_cache_keeps_at_most_max_adapters(tmp_path, builtin_loras, monkeypatch):
    from lora_diffusion import read_adapter, write_adapter
    from lora_diffusion.generation.engine import GenerationEngine, LoraChoice
    from lora_diffusion.lora.inject import adapter_names

    monkeypatch.setattr(GenerationEngine, "MAX_ADAPTERS", 2)
    engine = GenerationEngine(device="cpu")
    adapter = read_adapter(builtin_loras / "bold.safetensors")
    for i in range(4):
        adapter.metadata["copy"] = str(i)  # another content, the same tensors
        copy = write_adapter(adapter, tmp_path / f"c{i}.safetensors")
        engine.set_loras("builtin", [LoraChoice(str(copy), 1.0)])
    assert len(adapter_names(engine.pipeline("builtin").unet)) == 2


def test_the_same_request_gives_the_same_image_whatever_came_before(builtin_loras):
    import numpy as np

    from lora_diffusion.generation.engine import GenerationEngine, LoraChoice

    bold, sepia = str(builtin_loras / "bold.safetensors"), str(builtin_loras / "sepia-ish.safetensors")
    request = dict(base="builtin", seed=3, steps=2, width=64, height=64,
                   loras=[LoraChoice(bold, 0.7), LoraChoice(sepia, 0.3)])
    fresh = GenerationEngine(device="cpu").generate("a red circle", **request)[0][0]
    busy = GenerationEngine(device="cpu")
    for weights in [(1.9, -0.8), (0.1, 1.3), (-1.0, 0.0), (0.69, 0.31)]:
        busy.set_loras("builtin", [LoraChoice(bold, weights[0]), LoraChoice(sepia, weights[1])])
    again = busy.generate("a red circle", **request)[0][0]
    assert np.array_equal(np.asarray(fresh), np.asarray(again))


# ---- outputs: never an input, never lost, errors reported (items 8, 9) -------------------------------------------
def test_merge_refuses_an_output_that_is_one_of_its_inputs(tmp_path, builtin_loras, capsys):
    import shutil

    from lora_diffusion.cli.main import main

    v = tmp_path / "v.safetensors"
    shutil.copyfile(builtin_loras / "bold.safetensors", v)
    before = v.read_bytes()
    assert main(["merge", f"{v}:1", str(builtin_loras / "sepia-ish.safetensors"), "--out", str(v)]) == 2
    assert f"--out {v} is also an input; write to a new file" in capsys.readouterr().err
    assert v.read_bytes() == before


@pytest.mark.parametrize("command", ["merge", "resize", "convert"])
def test_an_existing_output_is_replaced_and_kept_as_bak(tmp_path, builtin_loras, capsys, command):
    from lora_diffusion.cli.main import main

    out = tmp_path / "out.safetensors"
    out.write_bytes(b"the user's earlier result")
    source = str(builtin_loras / "bold.safetensors")
    args = {"merge": ["merge", f"{source}:0.5", "--out", str(out)],
            "resize": ["resize", source, "--rank", "2", "--out", str(out)],
            "convert": ["convert", source, str(out), "--format", "diffusers"]}[command]
    assert main(args) == 0
    assert "the file it replaced is kept as out.safetensors.bak" in capsys.readouterr().out
    assert (tmp_path / "out.safetensors.bak").read_bytes() == b"the user's earlier result"
    from lora_diffusion import read_adapter

    assert read_adapter(out).modules


def test_a_write_error_from_safetensors_is_one_line_and_keeps_the_earlier_file(tmp_path, builtin_loras, monkeypatch):
    from safetensors import SafetensorError

    from lora_diffusion import read_adapter, write_adapter
    from lora_diffusion.adapters import file as file_module
    from lora_diffusion.errors import UserError

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    out = tmp_path / "x.safetensors"
    out.write_bytes(b"earlier")
    monkeypatch.setattr(file_module, "save_file", full_disk)
    with pytest.raises(UserError, match=r"^could not write .*x\.safetensors \(Error while serializing: IoError.*\); "
                                        r"any earlier file there is unchanged"):
        write_adapter(read_adapter(builtin_loras / "bold.safetensors"), out)
    assert out.read_bytes() == b"earlier" and not list(tmp_path.glob(".x.safetensors.tmp-*"))


def test_an_output_under_a_file_is_a_clear_error(tmp_path, builtin_loras, capsys):
    from lora_diffusion.cli.main import main

    (tmp_path / "file.txt").write_text("not a folder")
    out = tmp_path / "file.txt" / "sub" / "x.safetensors"
    assert main(["merge", str(builtin_loras / "bold.safetensors"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: could not write {out} (") and "\n" not in err


def test_temporary_files_of_killed_writers_are_cleaned_up(tmp_path, builtin_loras):
    from lora_diffusion import read_adapter, write_adapter

    dead = tmp_path / ".x.safetensors.tmp-999999999"  # no such process
    dead.write_bytes(b"half a file")
    write_adapter(read_adapter(builtin_loras / "bold.safetensors"), tmp_path / "x.safetensors")
    assert not dead.exists() and (tmp_path / "x.safetensors").is_file()


def test_merge_takes_at_most_32_inputs(tmp_path, builtin_loras, capsys):
    from lora_diffusion.cli.main import main

    specs = [str(builtin_loras / "bold.safetensors")] * 33
    assert main(["merge", *specs, "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "merge: 33 inputs; at most 32" in capsys.readouterr().err


# ---- odd request values (item 10) --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [99999999999999999999, float("inf"), float("nan"), 2**32, 1.5, "abc"])
def test_an_odd_seed_is_one_line_naming_the_field(seed):
    from lora_diffusion.errors import UserError
    from lora_diffusion.generation.engine import check_seed

    with pytest.raises(UserError, match=r"^Seed .*(give a whole number from 0 to 4294967295|is not a number)"):
        check_seed(seed, "Seed")
    assert check_seed(-1, "Seed") is None and check_seed(7.0, "Seed") == 7


def test_compare_refuses_a_huge_seed_in_one_line(builtin_loras, tmp_path):
    from lora_diffusion.errors import UserError
    from lora_diffusion.ui.app import UiState

    state = UiState(str(builtin_loras), out_dir=str(tmp_path / "out"), device="cpu")
    with pytest.raises(UserError, match=r"^Seed 1e\+20: give a whole number"):
        state.compare("builtin", "a cat", "", 1e20, 2, 5.0, 64, 64, "Euler", "bold", "0,1", "seeds", "", "")
    with pytest.raises(UserError, match=r"Compare seeds '1,99999999999999999999': seeds are whole numbers from 0"):
        state.compare("builtin", "a cat", "", 1, 2, 5.0, 64, 64, "Euler", "bold", "0,1", "seeds",
                      "1,99999999999999999999", "")


def test_requests_beyond_the_bounds_are_refused_before_any_work():
    from lora_diffusion.errors import UserError
    from lora_diffusion.generation.engine import GenerationEngine

    engine = GenerationEngine(device="cpu")
    with pytest.raises(UserError, match=r"--steps must be 1 to 1000 and --num-images 1 to 64, got 100000 and 1"):
        engine.generate("x", steps=100_000)
    with pytest.raises(UserError, match=r"multiples of 8 from 8 to 4096, got 65536x64"):
        engine.generate("x", steps=1, width=65536, height=64)
    assert not engine._pipes or list(engine._pipes) == ["builtin"]


def test_tag_counts_that_are_not_numbers_are_skipped():
    from lora_diffusion.ui.library import trigger_words

    info = {"metadata": {"ss_tag_frequency": '{"set": {"cat": "3", "dog": "many", "sun": 2.5, "x": null, '
                                              '"y": true, "z": "inf"}}'}}
    assert trigger_words(info) == ["cat", "sun"]


@pytest.mark.parametrize("line, message", [
    ("Steps: many", "PNG parameters: Steps 'many' is not a number"),
    ("Size: 64", "PNG parameters: Size '64' is not WIDTHxHEIGHT"),
    ("CFG scale: nan", "PNG parameters: CFG scale 'nan' is not a finite number"),
    ("Seed: 99999999999999999999", r"PNG parameters: Seed '99999999999999999999' is out of range \(at most 4294967295\)"),
    ("Steps: 1000000", r"PNG parameters: Steps '1000000' is out of range \(at most 1000\)"),
])
def test_bad_numbers_in_png_parameters_are_one_line(line, message):
    from lora_diffusion.errors import UserError

    with pytest.raises(UserError, match=f"^{message}$"):
        GenerationParams.from_text(f"a cat\n{line}")


# ---- serving others (item 7) -------------------------------------------------------------------------------------
def test_a_public_bind_without_auth_warns_and_never_serves_uploads(tmp_path, builtin_loras, monkeypatch, capsys):
    import gradio as gr

    from lora_diffusion.ui.app import launch

    seen = {}

    def fake_launch(self, **kwargs):  # no socket: the test checks what would be served
        seen.update(kwargs)
        return None, "http://0.0.0.0:7860/", None

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    launch(str(builtin_loras), host="0.0.0.0", out_dir=str(tmp_path / "out"), block=False)
    err = capsys.readouterr().err
    assert "WARNING: the UI is reachable from other machines (--host 0.0.0.0) with no login" in err
    assert "bases are confined to builtin, --base and --models-dir" in err
    uploads = builtin_loras / ".training-uploads"
    from pathlib import Path

    served = [Path(p).resolve() for p in seen["allowed_paths"]]
    assert all(p != uploads.resolve() and p not in uploads.resolve().parents for p in served)
    launch(str(builtin_loras), host="127.0.0.1", out_dir=str(tmp_path / "out"), block=False)
    assert "WARNING" not in capsys.readouterr().err


def test_a_confined_server_names_no_path_it_does_not_offer(tmp_path, builtin_loras):
    from lora_diffusion.errors import UserError
    from lora_diffusion.ui.app import UiState

    state = UiState(str(builtin_loras), out_dir=str(tmp_path / "out"), device="cpu", confine_paths=True,
                    data_dir=str(tmp_path / "data"))
    (tmp_path / "data" / "cats").mkdir(parents=True)
    messages = set()
    for base in ("/etc", "/no/such/folder", str(tmp_path)):
        with pytest.raises(UserError) as error:
            state.checked_base(base)
        messages.add(str(error.value).replace(repr(base), "BASE"))
    assert len(messages) == 1  # the same words whether the path exists or not
    assert state.checked_base("builtin") == "builtin"
    with pytest.raises(UserError, match="is not offered by this server; upload the images instead"):
        state.checked_folder("/etc")
    with pytest.raises(UserError, match="is not offered by this server"):
        state.checked_folder(str(tmp_path / "data" / ".." / "out"))
    assert state.checked_folder(str(tmp_path / "data" / "cats")) == str(tmp_path / "data" / "cats")
    open_state = UiState(str(builtin_loras), out_dir=str(tmp_path / "out"), device="cpu")
    assert open_state.checked_base(str(tmp_path)) == str(tmp_path)  # a local-only UI takes any path


def test_a_full_disk_at_the_end_of_training_writes_the_lora_elsewhere_and_says_where(tmp_path):
    from lora_diffusion.errors import UserError
    from lora_diffusion.training.adapter_output import save_or_rescue

    output, checkpoints = tmp_path / "out" / "style.safetensors", tmp_path / "ckpt"
    written = []

    def save(path):
        if path == output:
            raise UserError(f"could not write {path} (No space left on device); any earlier file there is unchanged. "
                            "Free disk space or choose another output")
        written.append(path)

    with pytest.raises(UserError) as error:
        save_or_rescue(output, checkpoints, save)
    assert str(error.value) == (f"could not write {output} (No space left on device); any earlier file there is "
                                f"unchanged; the trained LoRA was written to {checkpoints / 'style.safetensors'} instead "
                                "(move it where you want it)")
    assert written == [checkpoints / "style.safetensors"]

    def nowhere(path):
        raise UserError(f"could not write {path} (No space left on device); any earlier file there is unchanged. "
                        "Free disk space or choose another output")

    with pytest.raises(UserError, match=r"any earlier file there is unchanged; nor could it be written beside the "
                                        r"checkpoints or in the temp folder: free disk space and run again with "
                                        r"--resume latest$"):
        save_or_rescue(output, checkpoints, nowhere)
