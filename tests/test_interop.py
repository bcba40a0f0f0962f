"""Interop and LoRA tools: convert, merge, resize, extract, bake, single-file checkpoints, pickle refusal."""

import json

import pytest
import torch
from safetensors import safe_open

from conftest import randomize_lora, unet_inputs, unet_out
from lora_diffusion import (
    LoraConfig,
    UserError,
    inject_adapter,
    load_adapter,
    pipeline_components,
    read_adapter,
    save_adapter,
    set_adapter_weight,
)
from lora_diffusion.cli.main import main
from lora_diffusion.models.tiny import tiny_components, tiny_pipeline


def _lora_file(path, seed, alpha, arch="sd1", dtype="fp32"):
    comps = tiny_components(arch, seed=0)
    inject_adapter(comps["unet"], "x", LoraConfig(rank=4, alpha=alpha), "attn-ff")
    randomize_lora(comps["unet"], "x", seed, 0.3)
    for role in [r for r in comps if r.startswith("te")]:
        inject_adapter(comps[role], "x", LoraConfig(rank=4, alpha=alpha), kind="text")
        randomize_lora(comps[role], "x", seed + 100, 0.3)
    return save_adapter(path, comps, "x", dtype=dtype)


@pytest.fixture(scope="module")
def two_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tools")
    return _lora_file(folder / "a.safetensors", 1, 2.0), _lora_file(folder / "b.safetensors", 2, 8.0)


def _deltas(adapter):
    return {name: m.delta() for name, m in adapter.modules.items()}


def test_convert_kohya_diffusers_kohya_is_lossless(tmp_path, two_files, capsys):
    original = two_files[0]
    diffusers_file, back = tmp_path / "d.safetensors", tmp_path / "k.safetensors"
    assert main(["convert", str(original), str(diffusers_file), "--format", "diffusers"]) == 0
    assert main(["convert", str(diffusers_file), str(back), "--format", "kohya"]) == 0
    assert "diffusers layout" in capsys.readouterr().out
    a, d, b = read_adapter(original), read_adapter(diffusers_file), read_adapter(back)
    assert (a.layout, d.layout, b.layout) == ("kohya", "diffusers", "kohya")
    assert sorted(a.modules) == sorted(b.modules) == sorted(d.modules)
    for name, m in a.modules.items():
        for other in (d.modules[name], b.modules[name]):
            assert torch.equal(other.down, m.down) and torch.equal(other.up, m.up) and other.alpha == m.alpha
    meta = json.loads(d.metadata["lora_adapter_metadata"])
    assert meta["unet.lora_alpha"] == 2.0 and meta["unet.r"] == 4 and "to_q" in meta["unet.target_modules"]
    assert main(["inspect", str(diffusers_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["format"], info["rank"], info["alpha"]) == ("diffusers", 4, 2)


def test_exact_merge_equals_blending(tmp_path, two_files):
    out = tmp_path / "merged.safetensors"
    assert main(["merge", f"{two_files[0]}:0.7", f"{two_files[1]}:-0.4", "--out", str(out), "--dtype", "fp32"]) == 0
    assert read_adapter(out).rank == 8
    blended, merged = tiny_components("sd1", seed=0), tiny_components("sd1", seed=0)
    load_adapter(two_files[0], blended, "a", weight=0.7)
    load_adapter(two_files[1], blended, "b", weight=-0.4)
    load_adapter(out, merged, "m")
    inputs = unet_inputs(blended["unet"])
    reference = unet_out(blended["unet"], inputs)
    torch.testing.assert_close(unet_out(merged["unet"], inputs), reference, rtol=1e-5, atol=1e-5)
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged["te"](ids).last_hidden_state, blended["te"](ids).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)
    assert (reference - unet_out(tiny_components("sd1", seed=0)["unet"], inputs)).abs().max() > 1e-3


def test_svd_merge_to_the_summed_rank_is_exact_and_lower_ranks_report_their_error(tmp_path, two_files, capsys):
    from lora_diffusion.adapters.tools import merge_adapters_exact, merge_adapters_svd

    inputs = [(read_adapter(two_files[0]), 0.7), (read_adapter(two_files[1]), -0.4)]
    exact = _deltas(merge_adapters_exact(inputs))
    svd8, report8 = merge_adapters_svd(inputs, 8)
    assert report8.overall < 1e-6
    for name, delta in _deltas(svd8).items():
        torch.testing.assert_close(delta, exact[name], rtol=1e-5, atol=1e-6)
    svd3, report3 = merge_adapters_svd(inputs, 3)
    dropped = total = 0.0
    for name, delta in _deltas(svd3).items():
        dropped += float((delta.double() - exact[name].double()).pow(2).sum())
        total += float(exact[name].double().pow(2).sum())
    assert report3.overall == pytest.approx((dropped / total) ** 0.5, rel=1e-4) and report3.overall > 0.05
    out = tmp_path / "svd.safetensors"
    assert main(["merge", str(two_files[0]), str(two_files[1]), "--out", str(out), "--rank", "3"]) == 0
    assert "relative error" in capsys.readouterr().out and read_adapter(out).rank == 3


def test_resize_reports_the_dropped_singular_value_share(tmp_path, two_files, capsys):
    from lora_diffusion.adapters.tools import _svd_of_product, _factors, resize_adapter

    adapter = read_adapter(two_files[1])
    resized, report = resize_adapter(adapter, rank=2)
    by_name = {m.name: m for m in report.modules}
    for name, module in adapter.modules.items():
        full, small = module.delta().double(), resized.modules[name].delta().double()
        actual = float((full - small).norm() / full.norm())
        s = _svd_of_product(*_factors(module, 1.0))[1]
        share = float((s[2:] ** 2).sum() / (s ** 2).sum()) ** 0.5
        assert by_name[name].relative_error == pytest.approx(actual, rel=1e-4, abs=1e-7)
        assert by_name[name].relative_error == pytest.approx(share, rel=1e-9)
    dynamic, dyn_report = resize_adapter(adapter, keep_energy=0.9)
    for m in dyn_report.modules:
        assert m.relative_error <= 0.1 ** 0.5 + 1e-9  # kept ≥ 90% of Σσ², so dropped share ≤ √0.1
    assert main(["resize", str(two_files[1]), "--rank", "2", "--out", str(tmp_path / "r2.safetensors")]) == 0
    assert f"{report.overall:.3e}" in capsys.readouterr().out
    assert main(["resize", str(two_files[1]), "--out", str(tmp_path / "bad.safetensors")]) == 2


def test_extract_recovers_a_planted_rank4_difference(tmp_path):
    from lora_diffusion.adapters.tools import extract_difference

    base, tuned = tiny_pipeline("sd1", seed=0), tiny_pipeline("sd1", seed=0)
    gen = torch.Generator().manual_seed(5)
    planted = {}
    with torch.no_grad():
        for path in ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                     "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v"):
            layer = tuned.unet.get_submodule(path)
            delta = torch.randn(layer.weight.shape[0], 4, generator=gen) @ torch.randn(4, layer.weight.shape[1], generator=gen)
            layer.weight += 0.05 * delta
            planted[path] = 0.05 * delta
    base_dir, tuned_dir = tmp_path / "base", tmp_path / "tuned"
    base.save_pretrained(base_dir)
    tuned.save_pretrained(tuned_dir)
    out = tmp_path / "extracted.safetensors"
    assert main(["extract", "--base", str(base_dir), "--tuned", str(tuned_dir), "--rank", "4", "--out", str(out),
                 "--dtype", "fp32"]) == 0
    adapter = read_adapter(out)
    assert len(adapter.modules) == 2  # unchanged modules are left out
    for path, delta in planted.items():
        name = "lora_unet_" + path.replace(".", "_")
        torch.testing.assert_close(adapter.modules[name].delta(), delta, rtol=1e-4, atol=1e-5)
    _, report = extract_difference(pipeline_components(base), pipeline_components(tuned), 2)
    assert 0.05 < report.overall < 1
    loaded = pipeline_components(tiny_pipeline("sd1", seed=0))
    load_adapter(out, loaded)
    inputs = unet_inputs(tuned.unet)
    torch.testing.assert_close(unet_out(loaded["unet"], inputs), unet_out(tuned.unet, inputs), rtol=1e-4, atol=1e-4)


def test_bake_writes_a_folder_and_a_single_file_that_load_back_offline(tmp_path, two_files, tiny_base):
    from lora_diffusion.models.loading import load_pipeline

    out = tmp_path / "baked"
    single = tmp_path / "baked-single.safetensors"
    lora = tmp_path / "lora.safetensors"
    comps = pipeline_components(load_pipeline(tiny_base))
    inject_adapter(comps["unet"], "x", LoraConfig(rank=4, alpha=2))
    randomize_lora(comps["unet"], "x", 9, 0.3)
    save_adapter(lora, comps, "x", dtype="fp32")
    assert main(["bake", "--base", tiny_base, "--lora", f"{lora}:0.6", "--out", str(out),
                 "--single-file", str(single), "--dtype", "fp32"]) == 0
    blended = pipeline_components(load_pipeline(tiny_base))
    load_adapter(lora, blended, weight=0.6)
    folder, from_single = load_pipeline(str(out)), load_pipeline(str(single))
    inputs = unet_inputs(folder.unet)
    expected = unet_out(folder.unet, inputs)
    torch.testing.assert_close(expected, unet_out(blended["unet"], inputs), rtol=1e-5, atol=1e-5)
    assert torch.equal(unet_out(from_single.unet, inputs), expected)
    with safe_open(str(out / "text_encoder" / "model.safetensors"), "pt") as f:  # loads in transformers 4.x too
        assert all(k.startswith("text_model.") for k in f.keys())
    assert main(["bake", "--base", tiny_base, "--lora", str(lora), "--out", str(out)]) == 2  # never overwrites


def test_pickle_checkpoints_need_allow_pickle_and_load_weights_only(tmp_path, tiny_base, capsys, monkeypatch):
    import lora_diffusion.models.single_file as single_file
    from lora_diffusion.models.loading import load_pipeline
    from lora_diffusion.models.original_layout import pipeline_to_original

    pipe = load_pipeline(tiny_base)
    # a .ckpt carries no configs; real ones get the SD1.5 reference configs (tested at full size in the
    # slow test below), this tiny one gets its own
    monkeypatch.setattr(single_file, "reference_configs", lambda arch: single_file._pipeline_configs(pipe))
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": pipeline_to_original(pipe, "sd1")}, ckpt)
    with pytest.raises(UserError, match="pickle checkpoint, which can run code.*--allow-pickle"):
        load_pipeline(str(ckpt))
    assert main(["bake", "--base", str(ckpt), "--lora", "x.safetensors", "--out", str(tmp_path / "o")]) == 2
    assert "LoRA file not found" in capsys.readouterr().err
    loaded = load_pipeline(str(ckpt), allow_pickle=True)
    inputs = unet_inputs(pipe.unet)
    assert torch.equal(unet_out(loaded.unet, inputs), unet_out(pipe.unet, inputs))

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": Evil()}}, evil)
    with pytest.raises(UserError, match="cannot be read as plain tensors"):
        load_pipeline(str(evil), allow_pickle=True)
    assert "code ran" not in capsys.readouterr().out


def test_sdxl_kohya_names_in_original_layout_load_like_diffusers_names(tmp_path):
    from safetensors.torch import save_file

    from lora_diffusion.adapters.file import to_state_dict
    from lora_diffusion.adapters.formats.diffusers import module_path
    from lora_diffusion.models.original_layout import unet_module_to_original

    path = _lora_file(tmp_path / "xl.safetensors", 3, 4.0, arch="sdxl")
    adapter = read_adapter(path)
    unet_config = tiny_components("sdxl")["unet"].config
    renamed = {}
    for key, value in to_state_dict(adapter, torch.float32).items():
        name, _, suffix = key.partition(".")
        component, module = module_path(name)
        if component == "unet":
            name = "lora_unet_" + unet_module_to_original(module, unet_config).replace(".", "_")
        renamed[f"{name}.{suffix}"] = value
    assert any(k.startswith("lora_unet_input_blocks_") for k in renamed)
    assert any(k.startswith("lora_unet_middle_block_1_") for k in renamed)
    original_file = tmp_path / "xl-original.safetensors"
    save_file(renamed, str(original_file))
    a, b = tiny_components("sdxl", seed=0), tiny_components("sdxl", seed=0)
    load_adapter(path, a)
    load_adapter(original_file, b)
    g = torch.Generator().manual_seed(0)
    sample, context = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, a["unet"].config.cross_attention_dim, generator=g)
    extra = {"text_embeds": torch.randn(1, 1280, generator=g), "time_ids": torch.randn(1, 6, generator=g)}
    with torch.no_grad():
        out_a = a["unet"](sample, 10, context, added_cond_kwargs=extra).sample
        out_b = b["unet"](sample, 10, context, added_cond_kwargs=extra).sample
    assert torch.equal(out_a, out_b)
    set_adapter_weight(b["unet"], "xl-original", 0.0)


@pytest.mark.slow
def test_sd15_sized_single_file_without_our_metadata_loads_offline_with_reference_configs(tmp_path):
    """A1111-style checkpoint of a full-size SD1.5-architecture pipeline (random weights, fp16, no
    configs inside): loads here offline and its UNet gives the same output as the source's."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTokenizer

    from lora_diffusion.models.builtin import builtin_path
    from lora_diffusion.models.loading import load_pipeline
    from lora_diffusion.models.reference_configs import build_components
    from lora_diffusion.models.single_file import SD_SCHEDULER, SD_VAE, save_single_file

    torch.manual_seed(0)
    comps = build_components("sd1", device="cpu")
    scheduler = {k: v for k, v in SD_SCHEDULER.items() if not k.startswith("_")}
    pipe = StableDiffusionPipeline(
        unet=comps["unet"], text_encoder=comps["te"], vae=AutoencoderKL(**SD_VAE),
        tokenizer=CLIPTokenizer.from_pretrained(str(builtin_path() / "tokenizer")),
        scheduler=EulerDiscreteScheduler(**scheduler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    path = tmp_path / "sd15.safetensors"
    save_single_file(pipe, path, "sd1", dtype="fp16")
    save_file(load_file(str(path)), str(path))  # drop our metadata: a checkpoint as A1111 users have them
    loaded = load_pipeline(str(path))
    assert loaded.unet.config.cross_attention_dim == 768 and tuple(loaded.unet.config.block_out_channels) == (320, 640, 1280, 1280)
    pipe.unet.half().float()
    inputs = unet_inputs(pipe.unet, batch=1, size=8)
    inputs = (inputs[0], inputs[1], torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(unet_out(loaded.unet, inputs), unet_out(pipe.unet, inputs))
    ids = loaded.tokenizer("a photo of an astronaut riding a horse", return_tensors="pt").input_ids
    pipe.text_encoder.half().float()
    with torch.no_grad():
        assert torch.equal(loaded.text_encoder(ids).last_hidden_state, pipe.text_encoder(ids).last_hidden_state)


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_single_file_round_trip_keeps_every_tensor(tmp_path, arch):
    """SD1 (Hugging Face CLIP layout), SD2 (OpenCLIP layout, fused q/k/v) and SDXL (both encoders under
    conditioner.embedders, label_emb) single files read back exactly."""
    from lora_diffusion.models.single_file import load_single_file, save_single_file

    pipe = tiny_pipeline(arch, seed=0)
    path = save_single_file(pipe, tmp_path / f"{arch}.safetensors", arch, dtype="fp32")
    back = load_single_file(path)
    assert type(back).__name__ == type(pipe).__name__
    for component in ("unet", "vae", "text_encoder") + (("text_encoder_2",) if arch == "sdxl" else ()):
        ours, theirs = getattr(pipe, component).state_dict(), getattr(back, component).state_dict()
        assert sorted(ours) == sorted(theirs)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), component
