"""Block-wise learning rates and ranks (issue 33 item 8): the weights reach the optimizer's parameter groups, a
weight or rank of 0 leaves a block without LoRA, and the file keeps each module's rank where loaders read it."""

import pytest
import torch
from safetensors import safe_open

from lora_diffusion.errors import UserError
from lora_diffusion.lora.blocks import block_value, parse_blocks
from lora_diffusion.training.config import TrainConfig
from lora_diffusion.training.trainer import train


def test_block_patterns_name_path_prefixes_ranges_and_aliases():
    entries = parse_blocks("down=0.5,up_blocks.1=2,transformer_blocks.2-3=0", "--block-lr")
    assert entries == [("down_blocks", 0.5), ("up_blocks.1", 2.0), ("transformer_blocks.2", 0.0),
                       ("transformer_blocks.3", 0.0)]
    assert block_value("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", entries, 1.0) == 0.5
    assert block_value("up_blocks.1.attentions.0.proj_in", entries, 1.0) == 2.0
    assert block_value("up_blocks.10.attentions.0.proj_in", entries, 1.0) == 1.0  # block 10 is not block 1
    assert block_value("transformer_blocks.3.attn.to_q", entries, 1.0) == 0.0
    assert block_value("single_transformer_blocks.3.attn.to_q", entries, 1.0) == 1.0
    assert parse_blocks("out-only", "--block-lr") == [("down_blocks", 0.0), ("mid_block", 0.0)]
    with pytest.raises(UserError, match=r"^--block-ranks: 'x' in 'up=x' is not a whole number$"):
        parse_blocks("up=x", "--block-ranks", int)
    with pytest.raises(UserError, match=r"^--block-lr: 'up' is not BLOCK=VALUE"):
        parse_blocks("up", "--block-lr")


def test_block_weights_reach_the_optimizer_and_block_ranks_the_file(tiny_base, style_folder, tmp_path, monkeypatch):
    import lora_diffusion.training.run_setup as run_setup

    made = []
    real = run_setup.make_optimizer
    monkeypatch.setattr(run_setup, "make_optimizer", lambda cfg, groups, device: made.append(groups) or real(cfg, groups, device))
    out = tmp_path / "a.safetensors"
    cfg = TrainConfig(base=tiny_base, data=style_folder, output=str(out), resolution=32, steps=2, batch_size=2,
                      lr=1e-3, rank=4, alpha=4, seed=1, block_lr="down=0.5,mid=0", block_ranks="up_blocks.1=8",
                      save_dtype="fp32")
    train(cfg, progress=False)
    groups = made[0]
    assert sorted((g["block_lr_weight"], g["lr"]) for g in groups) == [(0.5, 5e-4), (1.0, 1e-3)]
    with safe_open(str(out), "pt") as f:
        keys = list(f.keys())
        assert not any("mid_block" in k for k in keys)  # weight 0: no LoRA there
        assert any("down_blocks" in k for k in keys)
        up1 = next(k for k in keys if k.startswith("lora_unet_up_blocks_1_") and k.endswith("lora_down.weight"))
        down0 = next(k for k in keys if k.startswith("lora_unet_down_blocks_") and k.endswith("lora_down.weight"))
        assert f.get_tensor(up1).shape[0] == 8 and f.get_tensor(down0).shape[0] == 4
        # one alpha for every module (kohya's block_dims with default block_alphas; what diffusers reads)
        assert f.get_tensor(up1.replace("lora_down.weight", "alpha")).item() == 4.0
        assert f.get_tensor(down0.replace("lora_down.weight", "alpha")).item() == 4.0


def test_a_file_with_block_ranks_loads_in_diffusers_as_our_engine_merges_it(tiny_base, style_folder, tmp_path):
    from diffusers import StableDiffusionPipeline

    from lora_diffusion import load_adapter, pipeline_components
    from lora_diffusion.lora.inject import lora_layers

    out = tmp_path / "a.safetensors"
    train(TrainConfig(base=tiny_base, data=style_folder, output=str(out), resolution=32, steps=3, batch_size=2,
                      lr=5e-2, rank=4, seed=1, block_ranks="up_blocks.1=8,down_blocks.0=2", save_dtype="fp32"),
          progress=False)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base)
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    pipe.load_lora_weights(str(out))
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # the fused weights stay, under their own names
    ours = StableDiffusionPipeline.from_pretrained(tiny_base)
    load_adapter(out, pipeline_components(ours), name="x", weight=1.0)
    ranks = set()
    for path, layer in lora_layers(ours.unet).items():
        if layer.base_layer.weight.dim() != 2:
            continue
        delta = (layer.lora_B["x"].weight @ layer.lora_A["x"].weight).detach() * layer.alpha["x"] / layer.rank["x"]
        fused = dict(pipe.unet.named_parameters())[f"{path}.weight"].detach() - before[f"{path}.weight"]
        assert torch.allclose(fused, delta, atol=1e-6), path
        ranks.add(layer.rank["x"])
    assert ranks == {2, 4, 8}


def test_a_block_no_module_is_in_is_one_line(tiny_base, style_folder, tmp_path):
    cfg = TrainConfig(base=tiny_base, data=style_folder, output=str(tmp_path / "a.safetensors"), resolution=32,
                      steps=1, batch_size=2, block_lr="single=0")
    with pytest.raises(UserError, match=r"^--block-lr: block 'single_transformer_blocks' matches no module of this "
                                        r"base's denoiser; its blocks are named like "):
        train(cfg, progress=False)
