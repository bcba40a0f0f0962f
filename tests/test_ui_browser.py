"""The web UI in a real browser (Debian's chromium through Playwright): generate with two LoRAs,
train from uploaded images, and see the new LoRA in the library."""

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
    page.locator("#train-steps input").fill("6")
    page.locator("#train-start").click()
    page.locator("#train-status").get_by_text("saved browser-trained.safetensors").wait_for(timeout=240_000)
    assert (page.root / "loras" / "browser-trained.safetensors").is_file()
    page.screenshot(path=str(ARTIFACTS / "ui-train.png"), full_page=True)
    page.get_by_role("tab", name="Library").click()
    _choose(page, "library-choice", "browser-trained")
    info = page.locator("#library-info textarea")
    page.wait_for_function("() => document.querySelector('#library-info textarea').value.includes('rank:')")
    text = info.input_value()
    assert "base:     builtin" in text and "rank:     8" in text and "steps=6" in text
    page.screenshot(path=str(ARTIFACTS / "ui-library.png"), full_page=True)
