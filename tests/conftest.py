import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# What a red run is read against: the versions in use, first thing in the log, and any that differ from CI's pins.
_REPORTED = ("torch", "diffusers", "transformers", "accelerate", "datasets", "gradio", "peft", "huggingface-hub",
             "safetensors", "tokenizers", "numpy", "pillow", "torchao", "lycoris-lora", "playwright", "pytest")


def versions_in_use() -> list[str]:
    """Two lines: the versions of the packages this suite exercises, and those that differ from CI's pins."""
    import platform
    from importlib import metadata
    from pathlib import Path

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    pins = {}
    constraints = Path(__file__).resolve().parent.parent / ".ci" / "constraints.txt"
    if constraints.exists():
        for line in constraints.read_text().splitlines():
            name, sep, pinned = line.split("#", 1)[0].strip().partition("==")
            if sep:
                pins[name.strip().lower()] = pinned.strip()
    used = [f"{n} {version(n)}" for n in _REPORTED]
    moved = [f"{n} {version(n)} (pinned {pins[n]})" for n in _REPORTED if n in pins and version(n) != pins[n]]
    lines = [f"versions: python {platform.python_version()}, " + ", ".join(used)]
    if not constraints.exists():
        lines.append("no .ci/constraints.txt to compare with")
    else:
        lines.append("differs from .ci/constraints.txt: " + (", ".join(moved) if moved else "nothing"))
    return lines


def pytest_sessionstart(session):
    # written straight to the terminal: pytest's own header hook is silent under README's `pytest -q`
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for line in versions_in_use():
            reporter.write_line(line)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A saved tiny SD1-architecture pipeline folder, usable as --base."""
    from lora_diffusion.models.tiny import tiny_pipeline

    folder = tmp_path_factory.mktemp("base") / "tiny"
    tiny_pipeline("sd1", seed=0).save_pretrained(str(folder))
    return str(folder)


def saved_tiny_base(tmp_path_factory, arch: str) -> str:
    """A tiny pipeline of family ``arch`` saved as a folder, usable as --base."""
    from lora_diffusion.models.tiny import tiny_pipeline

    folder = tmp_path_factory.mktemp(arch) / "base"
    tiny_pipeline(arch).save_pretrained(str(folder))
    return str(folder)


def family_fixed_loss(base: str, data: str, adapter=None) -> float:
    """The training loss of ``data`` on ``base`` under 8 fixed noise draws, with ``adapter`` loaded at weight 1:
    the base's family gives the conditioning and the objective, as in training (latents from the posterior mean)."""
    from lora_diffusion import load_adapter, pipeline_components, set_adapter_weight
    from lora_diffusion.data.dataset import TrainingData
    from lora_diffusion.data.folder import scan_folder
    from lora_diffusion.families import family_of
    from lora_diffusion.models.loading import load_pipeline
    from lora_diffusion.training.objective import Share

    pipe = load_pipeline(base)
    if adapter:
        components = pipeline_components(pipe)
        set_adapter_weight(components["unet"], load_adapter(str(adapter), components), 1.0)
    family = family_of(pipe)
    conditioning, objective = family.conditioning(pipe, base), family.objective(pipe)
    items = TrainingData(scan_folder(data).examples, 32)
    vae = pipe.vae.config
    with torch.no_grad():
        pixels = torch.stack([items.pixels(i, 0) for i in range(len(items.items))])
        latents = (pipe.vae.encode(pixels).latent_dist.mean - (vae.shift_factor or 0.0)) * vae.scaling_factor
        states, added = conditioning.unet_inputs(
            conditioning.encode([e.caption for e in items.items], torch.device("cpu")), [])
        denoiser = getattr(pipe, family.denoiser)
        return sum(objective.loss(denoiser, latents, states, torch.Generator().manual_seed(k), added_cond_kwargs=added,
                                  min_snr_gamma=0.0, noise_offset=0.0, share=Share(0, len(latents))).item()
                   for k in range(8))


@pytest.fixture(scope="session")
def squares(tmp_path_factory):
    """Four 32 px squares of different colours with captions."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("squares")
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 90, 160)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a square {i}")
    return str(folder)


@pytest.fixture
def sd1():
    from lora_diffusion.models.tiny import tiny_components

    return tiny_components("sd1", seed=0)


def diffusers_load_lora(pipe, path, adapter_name):
    """diffusers' own loader on a local file, called the way every diffusers release takes it offline: the folder
    plus ``weight_name`` (a bare file path needs diffusers 0.38+ when HF_HUB_OFFLINE is set)."""
    from pathlib import Path

    pipe.load_lora_weights(str(Path(path).parent), weight_name=Path(path).name, adapter_name=adapter_name)


def unet_inputs(unet, batch=2, seed=0, size=8):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, unet.config.in_channels, size, size, generator=g)
    context = torch.randn(batch, 4, unet.config.cross_attention_dim, generator=g)
    return sample, torch.tensor([10] * batch), context


def unet_out(unet, inputs):
    with torch.no_grad():
        return unet(*inputs).sample


def randomize_lora(model, name, seed=1, scale=0.1):
    """Give an adapter non-zero B (as if trained) so its delta is visible."""
    from lora_diffusion import lora_layers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            if name in layer.lora_B:
                w = layer.lora_B[name].weight
                w.copy_((torch.randn(w.shape, generator=g) * scale).to(w.dtype))
            if name in layer.lora_bias:
                b = layer.lora_bias[name]
                b.copy_((torch.randn(b.shape, generator=g) * scale).to(b.dtype))


def assert_kill_and_resume_is_bit_identical(args, tmp_path, crash_at=3):
    """Train straight through; train again, killed (exit 137, no cleanup) right after the checkpoint at
    ``crash_at``, then ``--resume latest``: the two adapter files must be bit-identical. All three runs use every
    core (the thread count changes float rounding; the processes would otherwise each count the busy cores)."""
    import os
    import subprocess
    import sys

    args = [*args, "--cpu-threads", str(os.cpu_count() or 1)]

    from safetensors.torch import load_file

    from lora_diffusion.cli.main import main

    cmd = [sys.executable, "-m", "lora_diffusion", "train", *args]
    straight = tmp_path / "straight" / "a.safetensors"
    assert main(["train", *args, "--output", str(straight)]) == 0  # in this process: the same run, no start-up
    resumed = tmp_path / "resumed" / "a.safetensors"
    faulty = [sys.executable, str(Path(__file__).parent / "fault_cli.py"), "crash-after-checkpoint", str(crash_at),
              "train", *args]
    crashed = subprocess.run(faulty + ["--output", str(resumed)], capture_output=True, timeout=600)
    assert crashed.returncode == 137 and not resumed.exists()
    checkpoint = f"checkpoint-{crash_at:06d}"
    assert (tmp_path / "resumed" / "a-checkpoints" / checkpoint / "lora.safetensors").is_file()
    again = subprocess.run(cmd + ["--output", str(resumed), "--resume", "latest"], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stderr and checkpoint in again.stderr
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def single_file_in_its_folder(base: str, folder, file_name: str, to_original):
    """A copy of the diffusers folder ``base`` at ``folder`` with its transformer also saved as ``file_name`` in the
    model's original single-file names (``to_original(transformer) -> state dict``); returns (the folder's pipeline,
    the file's path, the pipeline loaded from the file), the file's transformer weights checked equal."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from lora_diffusion.models.loading import load_pipeline

    shutil.copytree(base, folder)
    reference = load_pipeline(str(folder))
    single = folder / file_name
    save_file({k: v.contiguous() for k, v in to_original(reference.transformer).items()}, str(single))
    pipe = load_pipeline(str(single))
    assert all(torch.equal(a, b) for a, b in zip(pipe.transformer.state_dict().values(),
                                                 reference.transformer.state_dict().values()))
    return reference, single, pipe


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch):
    """Runs in this process see an idle machine, so the derived thread count (``cpu_threads``) is the core count
    in every test and runs compared with each other compute alike; the thread rule's own tests set a load."""
    import lora_diffusion.training.plan as plan

    monkeypatch.setattr(plan, "busy_cores", lambda: 0.0)


@pytest.fixture(scope="session")
def style_folder(tmp_path_factory):
    """Four 32 px images of a coloured square on beige, captioned: the trainer tests' data."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("data")
    for i, color in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]):
        image = Image.new("RGB", (32, 32), (230, 210, 170))
        image.paste(color, (8, 8, 24, 24))
        image.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a square number {i}")
    return str(folder)
