"""CI's pins: made from the installed requirement graph (torch never pinned), read back exactly."""

import importlib.util
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _deps():
    spec = importlib.util.spec_from_file_location("ci_deps", ROOT / ".ci" / "deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_graph_holds_every_direct_dependency_at_its_installed_version_and_never_torch():
    graph = _deps().requirement_graph()
    for name in ("diffusers", "transformers", "accelerate", "datasets", "gradio", "safetensors", "peft", "pytest"):
        assert graph[name] == metadata.version(name)
    assert "torch" not in graph and "lora-diffusion" not in graph
    assert graph["huggingface-hub"] == metadata.version("huggingface-hub")  # reached through diffusers


def test_freeze_writes_pins_that_read_back_and_lowest_follows_pyproject(tmp_path, capsys):
    deps = _deps()
    out = tmp_path / "constraints.txt"
    deps.freeze(out)
    assert deps.read_pins(out) == deps.requirement_graph()
    assert out.read_text().startswith("# Versions known to pass the whole suite")
    deps.lowest()
    lines = capsys.readouterr().out.splitlines()
    assert "diffusers==0.37" in lines and "transformers==4.48" in lines and "gradio==6.16" in lines
    assert not any(line.startswith("torch==") for line in lines)


def test_the_committed_constraints_pin_this_projects_graph():
    pins = _deps().read_pins(ROOT / ".ci" / "constraints.txt")
    assert {"diffusers", "transformers", "peft", "gradio", "ruff"} <= set(pins) and "torch" not in pins
