"""--base-precision: a quantized frozen base (torchao) under a LoRA that trains as usual."""

import pytest
import torch

from conftest import randomize_lora, unet_inputs, unet_out
from lora_diffusion import UserError
from lora_diffusion.cli.main import main
from lora_diffusion.lora.config import LoraConfig
from lora_diffusion.lora.inject import inject_adapter, lora_layers, lora_parameters
from lora_diffusion.models.base_precision import is_quantized, quantize_frozen, stored_bytes
from lora_diffusion.models.tiny import tiny_pipeline

pytest.importorskip("torchao")


@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_quantized_base_keeps_the_lora_trainable_and_the_base_frozen(precision):
    unet = tiny_pipeline("sd1").unet
    inject_adapter(unet, "a", LoraConfig(rank=4))
    randomize_lora(unet, "a")
    inputs = unet_inputs(unet)
    reference = unet_out(unet, inputs)
    before = stored_bytes(unet)
    assert quantize_frozen(unet, precision, "cpu") == 50  # every frozen Linear: 32 wrapped + 18 others
    for layer in lora_layers(unet).values():
        assert is_quantized(layer.base_layer.weight) and not layer.base_layer.weight.requires_grad
        assert not is_quantized(layer.lora_A["a"].weight)
    assert stored_bytes(unet) < 0.8 * before
    out = unet(*inputs).sample
    assert (out - reference).abs().max() / reference.abs().max() < 0.1  # close to the full-precision base
    out.sum().backward()
    trained = lora_parameters(unet, "a")
    assert trained and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    frozen = [p for p in unet.parameters() if not p.requires_grad]
    assert all(p.grad is None for p in frozen)
    layer = next(iter(lora_layers(unet).values()))
    with pytest.raises(UserError, match="cannot be merged into a quantized base weight"):
        layer.merge()


@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_quantized_base_trains_a_file_that_loads_on_the_full_base(precision, tiny_base, tmp_path, capsys):
    from PIL import Image

    from lora_diffusion.adapters.apply import load_adapter, pipeline_components
    from lora_diffusion.adapters.file import read_adapter
    from lora_diffusion.models.loading import load_pipeline

    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (200, 40 + 100 * i, 40)).save(data / f"{i}.png")
    out = tmp_path / "q.safetensors"
    args = ["train", "--base", tiny_base, "--data", str(data), "--output", str(out), "--resolution", "32",
            "--steps", "3", "--batch-size", "2", "--caption", "a square", "--base-precision", precision]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"base precision: {precision} for 50 frozen Linear layers of the UNet and 12 of the text encoders" in err
    adapter = read_adapter(out)
    assert adapter.rank and len(adapter.modules) == 32
    assert all(t.dtype == torch.float16 for m in adapter.modules.values() for t in m.tensors())
    pipe = load_pipeline(tiny_base)
    load_adapter(out, pipeline_components(pipe))  # the full-precision base takes it as any LoRA


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--base-precision", "fp8"], "--base-precision fp8 needs a CUDA GPU with fp8 support (compute capability 8.9+"),
        (["--base-precision", "int8", "--dora"], "--dora with --base-precision int8: DoRA normalises the full-precision"),
        (["--base-precision", "fp16", "--mixed-precision", "bf16"], "--base-precision fp16 with --mixed-precision bf16"),
        (["--base-precision", "int4"], "config key 'base_precision' is 'int4'; allowed values: auto, bf16, fp16, fp8, int8, nf4"),
    ],
)
def test_unsupported_base_precisions_are_one_line(extra, message, tiny_base, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    out = tmp_path / "x.safetensors"
    code = main(["train", "--base", tiny_base, "--data", str(tmp_path), "--output", str(out), "--resolution", "32",
                 "--steps", "1", "--caption", "x"] + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert message in err[-1] and err[-1].startswith("error: ")
