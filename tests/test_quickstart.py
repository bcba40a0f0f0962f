"""The README's main job, end to end (slow: trains for about 2.5 minutes on 2 cores)."""

import re

import pytest

from lora_diffusion.cli.main import main


@pytest.mark.slow
def test_quickstart_trains_a_lora_that_moves_generations_toward_the_style(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    match = re.search(r"weight 0 → ([\d.]+), weight 1 → ([\d.]+)", out)
    assert match, out
    w0, w1 = float(match.group(1)), float(match.group(2))
    assert w1 > 2 * w0 and w1 - w0 > 0.1
    kept = re.search(r"content kept at weight 1: prompted shape read in (\d+)% \(restyled base: (\d+)%\), "
                     r"objects where the base drew them in (\d+)%, variety ([\d.]+)× the base's", out)
    assert kept, out
    assert 0 <= int(kept.group(1)) <= 100 and float(kept.group(4)) > 0.5  # six prompts: no share is a stable bar
    assert (tmp_path / "comparison.png").is_file() and (tmp_path / "sepia.safetensors").is_file()
