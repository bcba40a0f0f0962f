"""The web UI in a real browser (Debian's chromium through Playwright): generate with two LoRAs, with a
typed <lora:…> tag, from a dropped PNG; a Compare grid; train from uploaded images watching the loss curve,
and see the new LoRA in the library."""

import os
import shutil
from pathlib import Path

import pytest

from ui_helpers import builtin_loras, start_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(os.environ.get("LORA_DIFFUSION_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
EXAMPLES = Path(__file__).parent.parent / "examples" / "styles" / "sepia"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium on this machine (.ci/run installs Debian's)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    root = tmp_path_factory.mktemp("browser")
    lora_dir = builtin_loras(root / "loras")
    demo, url = start_app(lora_dir, root / "out")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#generate-button", timeout=60_000)
        page.root = root
        yield page
        browser.close()
    demo.close()


def _choose(page, dropdown_id, option):
    page.locator(f"#{dropdown_id} input").click()
    page.locator(f"#{dropdown_id}").get_by_role("option", name=option, exact=True).click()


def _set_slider(page, slider_id, value):
    box = page.locator(f"#{slider_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_generate_with_two_weighted_loras_shows_the_image(page):
    page.locator("#prompt textarea").fill("a red circle on a blue background")
    page.locator("#seed input").fill("7")
    for slot, (name, weight) in enumerate((("sepia-ish", 0.8), ("bold", -0.35))):
        page.locator(f"#lora-on-{slot} input").check()
        _choose(page, f"lora-name-{slot}", name)
        _set_slider(page, f"lora-weight-{slot}", weight)
    page.locator("#generate-button").click()
    page.locator("#gallery img").first.wait_for(timeout=120_000)
    params = page.locator("#params textarea").input_value()
    assert "Seed: 7" in params and "<lora:sepia-ish:0.8>" in params and "<lora:bold:-0.35>" in params
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-generate.png"), full_page=True)
    assert len(list((page.root / "out").glob("*.png"))) == 2


def test_training_from_the_train_tab_lands_in_the_library(page):
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-name textarea").fill("browser-trained")
    images = sorted(EXAMPLES.glob("*.png"))[:4]
    captions = [p.with_suffix(".txt") for p in images]
    page.locator("#train-files input[type=file]").set_input_files([str(p) for p in images + captions])
    page.locator("#train-files").get_by_text(images[0].name).first.wait_for(timeout=30_000)
    page.locator("#train-plan-button").click()  # the plan, before anything starts: every field still "auto"
    page.wait_for_function("() => document.querySelector('#train-plan textarea').value.startsWith("
                           "'plan: profile builtin')", timeout=60_000)
    assert "steps = 200  (100 passes over 4 images" in page.locator("#train-plan textarea").input_value()
    page.locator("#train-steps textarea").fill("40")
    page.locator("#train-start").click()
    # the live curve: its label counts the steps plotted; wait until it holds at least two
    page.wait_for_function(
        """() => { const m = document.querySelector('#train-loss-plot').innerText.match(/Loss \\(raw and smoothed\\): (\\d+) step/);
                   return m && Number(m[1]) >= 2; }""", timeout=240_000)
    page.locator("#train-loss-plot canvas, #train-loss-plot svg").first.wait_for(timeout=30_000)
    page.locator("#train-status").get_by_text("ETA").first.wait_for(timeout=60_000)  # a pace from step 2 on
    page.screenshot(path=str(ARTIFACTS / "ui-train-curve.png"), full_page=True)
    page.locator("#train-status").get_by_text("saved browser-trained.safetensors").wait_for(timeout=240_000)
    assert (page.root / "loras" / "browser-trained.safetensors").is_file()
    page.screenshot(path=str(ARTIFACTS / "ui-train.png"), full_page=True)
    page.get_by_role("tab", name="Library").click()
    # the new LoRA's card (its last validation image) selects it
    page.locator("#library-cards").get_by_text("browser-trained").first.wait_for(timeout=30_000)
    assert page.locator("#library-cards img").count() >= 3  # every LoRA has a card image, named when it has no preview
    page.locator("#library-cards button, #library-cards .thumbnail-item").filter(has_text="browser-trained").first.click()
    page.wait_for_function("() => document.querySelector('#library-info textarea').value.includes('browser-trained')",
                           timeout=30_000)
    page.locator("#library-loss-plot canvas, #library-loss-plot svg").first.wait_for(timeout=30_000)
    _choose(page, "library-choice", "browser-trained")
    info = page.locator("#library-info textarea")
    page.wait_for_function("() => document.querySelector('#library-info textarea').value.includes('rank:')")
    text = info.input_value()
    assert "base:     builtin" in text and "rank:     8" in text and "steps=40" in text
    page.screenshot(path=str(ARTIFACTS / "ui-library.png"), full_page=True)


def _newest_png(folder, before):
    made = sorted(set(folder.glob("*.png")) - before, key=lambda p: p.stat().st_mtime)
    return made[-1] if made else None


def _generate_and_wait(page):
    out = page.root / "out"
    before = set(out.glob("*.png"))
    page.locator("#generate-button").click()
    for _ in range(240):
        made = _newest_png(out, before)
        if made is not None:
            page.wait_for_timeout(300)  # the PNG is renamed into place whole; let the page catch up
            return made
        page.wait_for_timeout(500)
    raise AssertionError("no image was written")


def _pixels(path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _clear_slots(page):
    _set_slider(page, "count", 1)  # one image per click: the newest PNG is the one just made
    for slot in range(4):
        box = page.locator(f"#lora-on-{slot} input")
        if box.is_checked():
            box.uncheck()


def test_a_typed_lora_tag_gives_the_same_image_as_the_slot(page):
    import numpy as np

    page.get_by_role("tab", name="Generate").click()
    _clear_slots(page)
    page.locator("#prompt textarea").fill("a green star")
    page.locator("#seed input").fill("11")
    page.locator("#lora-on-0 input").check()
    _choose(page, "lora-name-0", "bold")
    _set_slider(page, "lora-weight-0", 0.6)
    by_slot = _generate_and_wait(page)
    _clear_slots(page)
    page.locator("#prompt textarea").fill("a green star <lora:bold:0.6>")
    by_tag = _generate_and_wait(page)
    assert np.array_equal(_pixels(by_slot), _pixels(by_tag))
    assert "<lora:bold:0.6>" in page.locator("#params textarea").input_value()
    page.screenshot(path=str(ARTIFACTS / "ui-prompt-tag.png"), full_page=True)


def test_a_dropped_png_fills_the_fields_and_regenerates_the_identical_image(page):
    import numpy as np

    page.get_by_role("tab", name="Generate").click()
    _clear_slots(page)
    page.locator("#prompt textarea").fill("a yellow moon <lora:sepia-ish:0.7>")
    page.locator("#seed input").fill("21")
    original = _generate_and_wait(page)
    page.locator("#prompt textarea").fill("something else")
    page.locator("#seed input").fill("1")
    page.get_by_text("PNG info: reuse an image's parameters").click()
    page.locator("#png-info input[type=file]").set_input_files(str(original))
    page.locator("#png-status").get_by_text(f"loaded {original.name}").wait_for(timeout=30_000)
    assert page.locator("#prompt textarea").input_value() == "a yellow moon <lora:sepia-ish:0.7>"
    assert page.locator("#seed input").input_value() == "21"
    again = _generate_and_wait(page)
    assert np.array_equal(_pixels(original), _pixels(again))
    page.screenshot(path=str(ARTIFACTS / "ui-png-info.png"), full_page=True)


def test_compare_makes_a_two_by_three_grid_with_the_right_labels(page):
    from PIL import Image

    page.get_by_role("tab", name="Generate").click()
    _clear_slots(page)
    page.locator("#prompt textarea").fill("a red circle on a blue background")
    page.get_by_text("Compare: a weight grid").click()
    _choose(page, "compare-lora", "sepia-ish")
    page.locator("#compare-weights textarea, #compare-weights input").first.fill("0,1")
    page.locator("#compare-values textarea").fill("1,2,3")
    page.locator("#compare-button").click()
    page.wait_for_function("() => document.querySelector('#compare-axes textarea').value.includes('columns:')",
                           timeout=240_000)
    axes = page.locator("#compare-axes textarea").input_value()
    assert axes == "rows: sepia-ish 0 | sepia-ish 1\ncolumns: seed 1 | seed 2 | seed 3"
    page.locator("#compare-grid img").first.wait_for(timeout=30_000)
    grids = sorted((page.root / "out").glob("*-grid.png"))
    assert len(grids) == 1
    grid = Image.open(grids[0])
    assert grid.size == (96 + 3 * 64, 24 + 2 * 64)
    assert grid.text["grid"] == axes
    page.screenshot(path=str(ARTIFACTS / "ui-compare.png"), full_page=True)
    grid.save(ARTIFACTS / "compare-grid.png")


def test_a_library_trigger_word_clicks_into_the_prompt(page):
    page.get_by_role("tab", name="Generate").click()
    page.locator("#prompt textarea").fill("a blue square")
    page.get_by_role("tab", name="Library").click()
    _choose(page, "library-choice", "bold")
    words = page.locator("#library-trigger-words")
    words.get_by_text("<b>not html</b>").first.wait_for(timeout=30_000)  # shown as text, never as markup
    words.get_by_text("<b>not html</b>").first.click()
    page.get_by_role("tab", name="Generate").click()
    page.wait_for_function("() => document.querySelector('#prompt textarea').value === 'a blue square, <b>not html</b>'",
                           timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "ui-trigger-word.png"), full_page=True)


def test_caption_grid_edits_land_on_disk(page):
    folder = page.root / "to-caption"
    folder.mkdir()
    for image in sorted(EXAMPLES.glob("*.png"))[:2]:
        shutil.copy(image, folder / image.name)
    first, second = sorted(p.name for p in folder.glob("*.png"))
    (folder / first).with_suffix(".txt").write_text("a sepia photo\n")
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-folder textarea").fill(str(folder))
    page.locator("#caption-panel").get_by_text("Captions: caption the images").first.click()  # open the panel
    page.locator("#caption-load").click()
    page.wait_for_function("() => document.querySelector('#caption-grid').innerText.includes('a sepia photo')",
                           timeout=30_000)
    cell = page.locator("#caption-grid [data-testid='cell-1-1']")  # the second row's caption, empty so far
    cell.dblclick()
    editor = cell.locator("textarea, input").first
    editor.wait_for(timeout=10_000)
    editor.fill("my typed caption")
    editor.press("Enter")
    page.locator("#caption-trigger textarea").fill("sks")
    page.locator("#caption-apply").click()
    page.wait_for_function("() => document.querySelector('#caption-grid').innerText.includes('sks, my typed caption')",
                           timeout=30_000)
    page.locator("#caption-save").click()
    page.locator("#caption-status").get_by_text("saved 2 captions").wait_for(timeout=30_000)
    assert (folder / first).with_suffix(".txt").read_text() == "sks, a sepia photo\n"
    assert (folder / second).with_suffix(".txt").read_text() == "sks, my typed caption\n"
    page.screenshot(path=str(ARTIFACTS / "ui-captions.png"), full_page=True)
