"""A command's start-up levers (lora_diffusion/startup.py): unused optional imports, the start-up line."""

import os
import subprocess
import sys

import pytest

from lora_diffusion.startup import describe_startup

# runs in a fresh interpreter: the levers act on a whole process, never on the test runner's
PROBE = """
import sys
from lora_diffusion.startup import UNUSED_OPTIONAL_PACKAGES, restore_import, skip_unused_imports
marked = skip_unused_imports()
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection
import accelerate
loaded = sorted(name for name in UNUSED_OPTIONAL_PACKAGES if sys.modules.get(name) is not None)
restore_import("torchao")
import torchao.quantization
print(",".join(marked), "|", ",".join(loaded), "|", type(sys.modules["torchao"]).__name__)
"""


def _probe(**env) -> list[str]:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                            env=os.environ | env)
    assert result.returncode == 0, result.stderr[-2000:]
    return [part.strip() for part in result.stdout.strip().splitlines()[-1].split("|")]


def test_unused_optional_packages_are_not_imported_and_torchao_comes_back_for_our_own_use():
    pytest.importorskip("peft")
    pytest.importorskip("torchao")
    # diffusers, transformers and accelerate load without peft, scikit-learn or torchao; torchao imports again
    assert _probe() == ["peft,sklearn,torchao", "", "module"]


@pytest.mark.slow  # two fresh interpreters importing the whole stack
def test_plain_startup_leaves_every_import_as_it_is():
    pytest.importorskip("peft")
    marked, loaded, _ = _probe(LORA_DIFFUSION_STARTUP="plain")
    assert marked == "" and "peft" in loaded.split(",")
    marked, _, _ = _probe(LORA_DIFFUSION_STARTUP="no-gpu-warmup")
    assert marked == "peft,sklearn,torchao"


def test_the_startup_line_gives_the_total_and_each_phase():
    marks = [("imports", 8.04), ("base loaded", 13.5), ("data and set-up", 15.46), ("first step", 17.0)]
    assert describe_startup(marks) == ("first step 17.0 s after start: imports 8.0 s, base loaded 5.5 s, "
                                       "data and set-up 2.0 s, first step 1.5 s")
