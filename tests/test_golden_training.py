"""Training is bit-identical to a recorded run: 20-step loss sequences and saved tensors per base family.

Recorded before the trainer's redesign (issue 29) so that refactoring it can be shown to change nothing: builtin,
sd1, sd2 (v-prediction) and sdxl tiny bases; cached and uncached latents; LoRA and LoKr. The record holds each
loss as a float's exact hex and a sha256 of the saved file's tensors (not its metadata, which has times in it).

The numbers belong to the library versions that made them (torch, diffusers, transformers on this CPU): with others
(`.ci/latest`, `.ci/lowest`) the test is skipped, saying which version differs. To record anew on purpose:
``LORA_DIFFUSION_RECORD_GOLDEN=1 python3 -m pytest tests/test_golden_training.py``.
"""

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

import pytest
import torch

from lora_diffusion.training.config import TrainConfig
from lora_diffusion.training.trainer import train

pytestmark = pytest.mark.slow


@pytest.fixture
def data(style_folder):
    """The trainer tests' four captioned squares: the record was made on them."""
    return style_folder

RECORD = Path(__file__).parent / "golden" / "training.json"
VERSIONS = ("torch", "diffusers", "transformers")
FAMILIES = ("builtin", "sd1", "sd2v", "sdxl")
CASES = [(family, cache, network) for family in FAMILIES for cache in ("memory", "off") for network in ("lora", "lokr")]


def _versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in VERSIONS}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    from lora_diffusion.models.tiny import tiny_pipeline

    folder = tmp_path_factory.mktemp("golden-bases")
    made = {"builtin": "builtin"}
    for family, arch in (("sd1", "sd1"), ("sd2v", "sd2"), ("sdxl", "sdxl")):
        pipe = tiny_pipeline(arch, seed=0)
        if family == "sd2v":
            pipe.scheduler.register_to_config(prediction_type="v_prediction")
        pipe.save_pretrained(str(folder / family))
        made[family] = str(folder / family)
    return made


def _tensor_digest(path: Path) -> str:
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(path), "pt") as f:
        for key in sorted(f.keys()):
            tensor = f.get_tensor(key)
            digest.update(key.encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _run(bases, data, tmp_path, family, cache, network) -> dict:
    out = tmp_path / f"{family}-{cache}-{network}.safetensors"
    cfg = TrainConfig(base=bases[family], data=data, output=str(out), resolution=32, steps=20, batch_size=2,
                      lr=5e-3, rank=4, seed=1, cache=cache, network=network,
                      targets="attn",  # the preset the record was made with, whatever a profile now derives
                      cpu_threads=2)  # and its thread count (torch's default on the 2-core machine that made it)
    result = train(cfg, progress=False)
    return {"losses": [float(loss).hex() for loss in result.losses], "tensors": _tensor_digest(out)}


@pytest.fixture(scope="module")
def record():
    if os.environ.get("LORA_DIFFUSION_RECORD_GOLDEN"):
        return None
    saved = json.loads(RECORD.read_text())
    moved = {k: (v, _versions()[k]) for k, v in saved["versions"].items() if _versions()[k] != v}
    if moved:
        pytest.skip("recorded with other library versions: "
                    + ", ".join(f"{k} {a} (here {b})" for k, (a, b) in moved.items()))
    return saved["runs"]


def test_training_matches_the_recorded_runs_bit_for_bit(bases, data, tmp_path, record):
    runs = {"/".join(case): _run(bases, data, tmp_path, *case) for case in CASES}
    if record is None:
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps({"versions": _versions(), "runs": runs}, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {RECORD}")
    assert sorted(runs) == sorted(record)
    for key, run in runs.items():
        assert run["losses"] == record[key]["losses"], f"{key}: loss sequence changed"
        assert run["tensors"] == record[key]["tensors"], f"{key}: saved tensors changed"
    for family in FAMILIES:  # cached latents train exactly as uncached ones; families and networks all differ
        for network in ("lora", "lokr"):
            assert runs[f"{family}/memory/{network}"]["losses"] == runs[f"{family}/off/{network}"]["losses"]
    assert len({tuple(run["losses"]) for run in runs.values()}) == len(FAMILIES) * 2
