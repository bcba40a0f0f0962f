"""The web UI's server side: library safety, plain-text metadata, and concurrent clients."""

import threading
from pathlib import Path

import pytest

from lora_diffusion import UserError
from lora_diffusion.ui.library import LoraLibrary
from ui_helpers import builtin_loras, start_app


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    return builtin_loras(tmp_path_factory.mktemp("ui") / "loras")


def test_library_names_cannot_leave_the_folder(tmp_path, lora_dir):
    library = LoraLibrary(lora_dir)
    assert library.names() == ["bold", "sepia-ish"]
    for bad in ("../../x", "..", "a/b", "a\\b", "/etc/passwd", ".hidden", "", "x" * 200, "a\x00b"):
        with pytest.raises(UserError, match="not allowed|outside the LoRA folder"):
            library.path(bad)
    assert library.path("bold") == lora_dir.resolve() / "bold.safetensors"
    with pytest.raises(UserError, match="no LoRA named 'missing'"):
        library.path("missing")


def test_library_upload_rename_delete(tmp_path, lora_dir):
    library = LoraLibrary(tmp_path / "lib")
    with pytest.raises(UserError, match="only .safetensors LoRA files are accepted"):
        (tmp_path / "evil.ckpt").write_bytes(b"\x80\x04pickle")
        library.add(tmp_path / "evil.ckpt")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 100)
    with pytest.raises(UserError, match="not a valid safetensors file"):
        library.add(tmp_path / "junk.safetensors")
    assert library.names() == []  # nothing refused was kept
    assert library.add(lora_dir / "bold.safetensors") == "bold"
    with pytest.raises(UserError, match="already exists"):
        library.add(lora_dir / "bold.safetensors")
    assert library.rename("bold", "strong (v2)") == "strong (v2)"
    with pytest.raises(UserError, match="not allowed"):
        library.rename("strong (v2)", "../outside")
    assert library.names() == ["strong (v2)"]
    library.delete("strong (v2)")
    assert library.names() == [] and not list((tmp_path / "lib").iterdir())


def test_metadata_is_shown_as_plain_text(tmp_path, lora_dir):
    from lora_diffusion.ui.app import UiState, _md

    state = UiState(str(lora_dir), out_dir=str(tmp_path / "out"), device="cpu")
    text = state.describe("bold")
    assert "rank:     4" in text and "base:     builtin" in text
    assert 'trigger:  ["<b>not html</b>"]' in text  # shown verbatim in a Textbox, never rendered
    assert _md("<img src=x onerror=alert(1)>*x*\n") == "&lt;img src=x onerror=alert\\(1\\)&gt;\\*x\\*\\\\n"


def test_two_concurrent_generate_calls_both_succeed_and_bad_names_are_refused(tmp_path, lora_dir):
    from gradio_client import Client

    demo, url = start_app(lora_dir, tmp_path / "out")
    try:
        results, errors = {}, []

        def call(key, seed):
            try:
                client = Client(url, verbose=False)
                results[key] = client.predict(
                    "builtin", f"a red circle, {key}", "", seed, 4, 5.0, 64, 64, "Euler a", 1,
                    True, "sepia-ish", 0.8, True, "bold", -0.5, False, None, 1.0, False, None, 1.0,
                    api_name="/generate",
                )
            except Exception as error:  # noqa: BLE001 - collected and asserted below
                errors.append(error)

        threads = [threading.Thread(target=call, args=(k, s)) for k, s in (("one", 1), ("two", 2))]
        [t.start() for t in threads]
        [t.join(300) for t in threads]
        assert errors == [] and sorted(results) == ["one", "two"]
        for key, seed in (("one", 1), ("two", 2)):
            gallery, params = results[key]
            assert len(gallery) == 1 and f"Seed: {seed}" in params and "<lora:sepia-ish:0.8>" in params
        assert len(list((tmp_path / "out").glob("*.png"))) == 2

        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="not in the list of choices|not allowed"):
            client.predict("builtin", "x", "", 1, 2, 5.0, 64, 64, "Euler a", 1,
                           True, "../../x", 1.0, False, None, 1.0, False, None, 1.0, False, None, 1.0,
                           api_name="/generate")
    finally:
        demo.close()


def test_moving_a_slider_and_generating_again_reloads_nothing(tmp_path, lora_dir, monkeypatch):
    import lora_diffusion.generation.engine as engine_module
    from lora_diffusion.ui.app import UiState

    reads, loads = [], []
    real_read, real_load = engine_module.read_adapter, engine_module.load_pipeline
    monkeypatch.setattr(engine_module, "read_adapter", lambda p: reads.append(p) or real_read(p))
    monkeypatch.setattr(engine_module, "load_pipeline", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    state = UiState(str(lora_dir), out_dir=str(tmp_path / "out"), device="cpu")
    slots = [True, "sepia-ish", 0.8, True, "bold", 0.2] + [False, None, 1.0] * 2
    for weight in (0.8, -0.4, 1.5):
        slots[2] = weight
        gallery, params = state.generate("builtin", "a blue square", "", 3, 2, 5.0, 64, 64, "Euler", 1, slots)
        assert f"<lora:sepia-ish:{weight:g}>" in params and len(gallery) == 1
    assert len(loads) == 1 and len(reads) == 2


def test_uploaded_zip_is_flattened_and_cannot_write_outside(tmp_path):
    import zipfile

    from lora_diffusion.ui.jobs import prepare_data

    png = (Path(__file__).parent.parent / "examples" / "styles" / "sepia" / "000.png").read_bytes()
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../../escape.png", png)
        z.writestr("nested/dir/a.png", png)
        z.writestr("nested/dir/a.txt", "a caption")
        z.writestr("__MACOSX/._a.png", b"junk")
        z.writestr("notes.docx", b"not data")
    target = prepare_data([str(archive)], "", tmp_path / "job" / "data")
    assert sorted(p.name for p in target.iterdir()) == ["a.png", "a.txt", "escape.png"]
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "job" / "escape.png").exists()
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(UserError, match="bad.zip: not a valid zip file"):
        prepare_data([str(tmp_path / "bad.zip")], "", tmp_path / "job2")
    with pytest.raises(UserError, match="no training images"):
        prepare_data([], "", tmp_path / "job3")
    with pytest.raises(UserError, match="image folder '/nope' does not exist"):
        prepare_data([], "/nope", tmp_path / "job4")


def test_auth_is_required_when_set(tmp_path, lora_dir):
    from gradio_client import Client

    from lora_diffusion.ui.app import launch
    from ui_helpers import free_port

    demo, url = launch(str(lora_dir), port=free_port(), out_dir=str(tmp_path / "out"), auth="ann:s3cret", block=False)
    try:
        with pytest.raises(Exception):
            Client(url, verbose=False)
        assert Client(url, auth=("ann", "s3cret"), verbose=False).view_api(return_format="dict")["named_endpoints"]
    finally:
        demo.close()
    with pytest.raises(UserError, match="--auth must be USER:PASSWORD"):
        launch(str(lora_dir), port=free_port(), auth="nocolon", block=False)


def test_library_convert_and_merge(tmp_path, lora_dir):
    import shutil

    from lora_diffusion import read_adapter
    from lora_diffusion.ui.app import UiState, _convert, _merge

    folder = tmp_path / "lib"
    shutil.copytree(lora_dir, folder)
    state = UiState(str(folder), out_dir=str(tmp_path / "out"), device="cpu")
    assert _convert(state, "bold", "diffusers") == "bold-diffusers"
    assert read_adapter(folder / "bold-diffusers.safetensors").layout == "diffusers"
    assert _merge(state, "bold:0.5, sepia-ish:-0.25", "mix") == "mix"
    assert read_adapter(folder / "mix.safetensors").rank == 8
    with pytest.raises(UserError, match="list at least two LoRAs"):
        _merge(state, "bold", "x")
    with pytest.raises(UserError, match="not allowed"):
        _merge(state, "../../etc:1, bold:1", "y")
    with pytest.raises(UserError, match="already exists"):
        _merge(state, "bold:1, sepia-ish:1", "mix")


def test_a_typed_lora_tag_generates_the_same_image_as_the_slot(tmp_path, lora_dir):
    import numpy as np
    from PIL import Image

    from lora_diffusion.ui.app import UiState

    state = UiState(str(lora_dir), out_dir=str(tmp_path / "out"), device="cpu")
    off = [False, None, 1.0] * 4
    by_slot, params_slot = state.generate("builtin", "a blue square", "", 3, 2, 5.0, 64, 64, "Euler", 1,
                                          [True, "sepia-ish", 0.6] + off[3:])
    by_tag, params_tag = state.generate("builtin", "a blue square <lora:sepia-ish:0.6>", "", 3, 2, 5.0, 64, 64,
                                        "Euler", 1, off)
    assert np.array_equal(np.asarray(Image.open(by_slot[0][0])), np.asarray(Image.open(by_tag[0][0])))
    assert params_slot == params_tag and "a blue square <lora:sepia-ish:0.6>" in params_tag
    with pytest.raises(UserError, match="no LoRA named 'nope'"):
        state.generate("builtin", "x <lora:nope:1>", "", 3, 2, 5.0, 64, 64, "Euler", 1, off)


def test_a_dropped_png_fills_the_fields_and_regenerates_the_identical_image(tmp_path, lora_dir):
    import numpy as np
    from PIL import Image

    from lora_diffusion.ui.app import UiState

    state = UiState(str(lora_dir), out_dir=str(tmp_path / "out"), device="cpu")
    off = [False, None, 1.0] * 4
    gallery, _ = state.generate("builtin", "a blue square", "blurry", 7, 3, 6.5, 64, 56, "Euler a", 1,
                                [True, "bold", -0.4] + off[3:])
    fields = state.png_fields(gallery[0][0])
    assert fields[:8] == ("a blue square <lora:bold:-0.4>", "blurry", 7, 3, 6.5, 64, 56, "Euler a")
    assert fields[8] == f"loaded {Path(gallery[0][0]).name}"
    again, _ = state.generate("builtin", *fields[:8], 1, off)
    assert np.array_equal(np.asarray(Image.open(gallery[0][0])), np.asarray(Image.open(again[0][0])))
    # an A1111 PNG naming a LoRA the library lacks: the fields still fill, the status names it
    a1111 = tmp_path / "a1111.png"
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a castle <lora:not-here:0.7>\nNegative prompt: fog\nSteps: 25, Sampler: DPM++ 2M "
                                "Karras, CFG scale: 7, Seed: 123, Size: 512x768, Model hash: abc, Model: sd15")
    Image.new("RGB", (8, 8)).save(a1111, pnginfo=info)
    fields = state.png_fields(str(a1111))
    assert fields == ("a castle <lora:not-here:0.7>", "fog", 123, 25, 7.0, 512, 768, "DPM++ 2M Karras",
                      "loaded a1111.png; not in the LoRA library: not-here")
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(UserError, match=r"^plain.png: no generation parameters in this PNG$"):
        state.png_fields(str(plain))


def test_compare_makes_a_labelled_grid_with_the_same_seed_down_each_column(tmp_path, lora_dir):
    import numpy as np
    from PIL import Image

    from lora_diffusion.ui.app import UiState

    state = UiState(str(lora_dir), out_dir=str(tmp_path / "out"), device="cpu")
    path, axes = state.compare("builtin", "a blue square", "", 5, 2, 5.0, 64, 64, "Euler", "sepia-ish", "0,1",
                               "seeds", "3,4,5", None)
    grid = Image.open(path)
    assert grid.size == (96 + 3 * 64, 24 + 2 * 64)  # row-label band 96 px, column-label band 24 px
    assert axes == "rows: sepia-ish 0 | sepia-ish 1\ncolumns: seed 3 | seed 4 | seed 5"
    text = grid.text["parameters"].split("\n\n")
    assert len(text) == 6 and "Seed: 3" in text[0] and "Seed: 3" in text[3] and "<lora:sepia-ish:1>" in text[3]
    # weight 0 row = the image without the LoRA, cell by cell
    plain, _ = state.generate("builtin", "a blue square", "", 4, 2, 5.0, 64, 64, "Euler", 1, [False, None, 1.0] * 4)
    cell = np.asarray(grid)[24:88, 96 + 64:96 + 128]
    assert np.array_equal(cell, np.asarray(Image.open(plain[0][0]).convert("RGB")))
    path, axes = state.compare("builtin", "a blue square", "", 5, 2, 5.0, 64, 64, "Euler", "sepia-ish", "0.5",
                               "second LoRA", "-1,1", "bold")
    assert axes == "rows: sepia-ish 0.5\ncolumns: bold -1 | bold 1"
    with pytest.raises(UserError, match="Compare by prompts: write one prompt per line"):
        state.compare("builtin", "x", "", 5, 2, 5.0, 64, 64, "Euler", "bold", "0,1", "prompts", "", None)
    with pytest.raises(UserError, match="Compare weights 'a,b': write comma-separated numbers"):
        state.compare("builtin", "x", "", 5, 2, 5.0, 64, 64, "Euler", "bold", "a,b", "seeds", "1", None)


def test_curves_trigger_words_and_preview_cards(tmp_path, lora_dir):
    import json
    import shutil

    from lora_diffusion.training.curves import curve_rows, smoothed, thin
    from lora_diffusion.ui.app import UiState, _add_to_prompt
    from lora_diffusion.ui.library import trigger_words

    assert smoothed([1.0, 0.0]) == [1.0, pytest.approx(0.9 * 0.1 / 0.19)]  # debiased EMA, first point kept
    assert thin([(i, float(i)) for i in range(1, 1001)], 5) == [(1, 1.0), (251, 251.0), (501, 501.0), (750, 750.0), (1000, 1000.0)]
    rows = curve_rows([(1, 2.0), (2, 1.0)])
    assert rows["step"] == [1, 2, 1, 2] and rows["series"] == ["raw", "raw", "smoothed", "smoothed"]
    assert trigger_words({"metadata": {"ss_tag_frequency": json.dumps({"a": {"red": 3, "blue": 5}, "b": {"red": 4}})}}) \
        == ["red", "blue"]
    assert _add_to_prompt("a cat", ["sks style"]) == "a cat, sks style"
    assert _add_to_prompt("a cat, sks style", ["sks style"]) == "a cat, sks style"

    folder = tmp_path / "loras"
    shutil.copytree(lora_dir, folder)
    state = UiState(str(folder), out_dir=str(tmp_path / "out"), device="cpu")
    from PIL import Image

    Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / "bold.preview.png")
    cards = state.cards()
    assert [name for _, name in cards] == ["bold", "sepia-ish"]
    assert cards[0][0] == str(folder / "bold.preview.png")
    # a LoRA without a preview gets a card with its name drawn on it (not a grey tile), its own for each name
    import numpy as np

    drawn = np.asarray(Image.open(cards[1][0]))
    assert drawn.shape == (256, 256, 3) and (drawn.min(axis=2) < 100).sum() > 50  # dark text on the light card
    assert state.cards()[1][0] == cards[1][0] and state._blank_card("other") != Path(cards[1][0])
    text, words, frame = state.details("sepia-ish")
    assert words == [["<b>not html</b>"]] and "rank:     4" in text and frame is None
    state.library.rename("bold", "bolder")  # the preview follows its LoRA
    assert (folder / "bolder.preview.png").is_file() and not (folder / "bold.preview.png").exists()
    state.library.delete("bolder")
    assert not (folder / "bolder.preview.png").exists()


def test_the_train_tab_eta_comes_from_the_pace_after_the_first_step_and_the_last_step_says_what_follows(tmp_path):
    """The ETA used the whole elapsed time (base load and first step included) over the steps: 0:50 shown with 6 min
    left; and a full bar sat at "ETA 0:00" while the file was saved. Now: the pace since the first step, and the
    last step names what is still coming."""
    from lora_diffusion.ui.jobs import JobState, TrainingJob
    from lora_diffusion.ui.library import LoraLibrary

    job = TrainingJob(LoraLibrary(tmp_path / "loras"))
    job._state = JobState(status="running", steps=8)
    job._finishing = "last step done: saving the LoRA and drawing the final validation images"
    job._on_step({"step": 1, "steps": 8, "loss": 0.5, "elapsed": 60.0})  # a minute of loading, then one step
    assert job.snapshot().eta_s is None and job.snapshot().message == "training (timing the steps)"
    job._on_step({"step": 2, "steps": 8, "loss": 0.4, "elapsed": 70.0})
    assert job.snapshot().eta_s == 60.0  # 10 s/step × 6 steps, not (70 / 2) × 6
    for step in range(3, 9):
        job._on_step({"step": step, "steps": 8, "loss": 0.3, "elapsed": 60.0 + 10 * step})
    state = job.snapshot()
    assert state.eta_s == 0.0 and state.message == "last step done: saving the LoRA and drawing the final validation images"
