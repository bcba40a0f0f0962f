"""`lora-diffusion inspect` and the CLI's error contract."""

import json
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import save_file
import torch

from conftest import randomize_lora
from lora_diffusion import LoraConfig, inject_adapter, save_adapter
from lora_diffusion.cli.main import main
from lora_diffusion.models.tiny import tiny_components


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    comps = tiny_components("sd1")
    inject_adapter(comps["unet"], "s", LoraConfig(rank=4, alpha=2))
    inject_adapter(comps["te"], "s", LoraConfig(rank=4, alpha=2), kind="text")
    randomize_lora(comps["unet"], "s")
    meta = {"ss_tag_frequency": "\x1b[31mred\x1b[0m"}  # an ANSI escape from an untrusted file
    return save_adapter(tmp_path_factory.mktemp("l") / "s.safetensors", comps, "s", metadata=meta)


def test_inspect_json(lora_file, capsys):
    assert main(["inspect", str(lora_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "kohya"
    assert info["rank"] == 4 and info["alpha"] == 2
    assert info["modules"] == 32 + 8 and info["components"] == {"te": 8, "unet": 32}
    assert info["base"] == "sd1"
    assert info["metadata"]["ss_network_dim"] == "4"
    assert info["size_bytes"] == lora_file.stat().st_size


def test_inspect_text_escapes_control_characters(lora_file, capsys):
    assert main(["inspect", str(lora_file)]) == 0
    out = capsys.readouterr().out
    assert "rank:     4" in out and "modules:  40 (te 8, unet 32)" in out and "base:     sd1" in out
    assert "\x1b" not in out and "\\x1b[31mred" in out


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: LoRA file not found: {tmp_path / 'missing.safetensors'}; check the path\n"
    bad = tmp_path / "bad.safetensors"
    save_file({"weird.key": torch.zeros(1)}, str(bad))
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in none of the LoRA layouts read here" in err


def test_console_script_help_and_debug(tmp_path):
    exe = shutil.which("lora-diffusion")
    cmd = [exe] if exe else [sys.executable, "-m", "lora_diffusion"]
    result = subprocess.run(cmd + ["inspect", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--json" in result.stdout
    result = subprocess.run(cmd + ["--debug", "inspect", str(tmp_path / "x.safetensors")], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" in result.stderr
