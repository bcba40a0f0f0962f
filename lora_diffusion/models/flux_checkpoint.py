"""FLUX.1's single-file transformer (``flux1-dev.safetensors``, ``flux1-schnell.safetensors``: Black Forest Labs'
names, q/k/v fused) as a diffusers ``FluxTransformer2DModel`` (the rest of the pipeline comes from the diffusers
folder the file sits in: ``transformer_file.py``).

The conversion is ours and reads every width from the tensors (diffusers' own single-file converter assumes
FLUX.1's 3072); tests hold it to diffusers' converter on FLUX.1's real row counts. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError

PREFIX = "model.diffusion_model."
GLOBAL = {  # BFL module -> diffusers module, outside the blocks
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder", "img_in": "x_embedder", "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",  # stored (shift, scale); diffusers has (scale, shift)
}
DOUBLE = {  # BFL module of a double block -> the diffusers modules its rows hold, in order
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn.proj": ("attn.to_out.0",),
    "img_mlp.0": ("ff.net.0.proj",), "img_mlp.2": ("ff.net.2",), "img_mod.lin": ("norm1.linear",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "txt_attn.proj": ("attn.to_add_out",),
    "txt_mlp.0": ("ff_context.net.0.proj",), "txt_mlp.2": ("ff_context.net.2",), "txt_mod.lin": ("norm1_context.linear",),
    "img_attn.norm.query_norm": ("attn.norm_q",), "img_attn.norm.key_norm": ("attn.norm_k",),
    "txt_attn.norm.query_norm": ("attn.norm_added_q",), "txt_attn.norm.key_norm": ("attn.norm_added_k",),
}
SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",), "norm.query_norm": ("attn.norm_q",), "norm.key_norm": ("attn.norm_k",),
}
BLOCKS = {"double_blocks": ("transformer_blocks", DOUBLE), "single_blocks": ("single_transformer_blocks", SINGLE)}
TENSORS = {"weight": "weight", "bias": "bias", "scale": "weight"}  # RMSNorm scales are diffusers' weights


def _split_rows(tensor: torch.Tensor, parts: int, hidden: int) -> list[torch.Tensor]:
    if parts == 3:
        return list(torch.chunk(tensor, 3, dim=0))
    return list(torch.split(tensor, [hidden, hidden, hidden, tensor.shape[0] - 3 * hidden], dim=0))


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    shift, scale = tensor.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def to_diffusers(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A FLUX transformer state dict in BFL names as diffusers' ``FluxTransformer2DModel`` names it. A tensor
    neither table knows is one error line (a file of another model)."""
    state = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in checkpoint.items()}
    hidden = int(state["img_in.weight"].shape[0]) if "img_in.weight" in state else 0
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, _, kind = key.rpartition(".")
        if kind not in TENSORS:
            raise UserError(f"FLUX checkpoint tensor {key!r} is not one of FLUX.1's; the file is of another model")
        if module in GLOBAL:
            out[f"{GLOBAL[module]}.{TENSORS[kind]}"] = _swap_halves(tensor) if module.startswith("final_layer.ada") else tensor
            continue
        block, _, rest = module.partition(".")
        index, _, leaf = rest.partition(".")
        if block not in BLOCKS or not index.isdigit() or leaf not in BLOCKS[block][1]:
            raise UserError(f"FLUX checkpoint tensor {key!r} is not one of FLUX.1's; the file is of another model")
        ours, table = BLOCKS[block]
        targets = table[leaf]
        pieces = [tensor] if len(targets) == 1 else _split_rows(tensor, len(targets), hidden)
        for target, piece in zip(targets, pieces):
            out[f"{ours}.{index}.{target}.{TENSORS[kind]}"] = piece.contiguous()
    return out


def load_flux_transformer(path: Path, config: dict, folder: Path, dtype: torch.dtype):
    """The ``FluxTransformer2DModel`` of ``config`` (its diffusers ``folder``'s) with the weights of the BFL file
    ``path``."""
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(config)
    state = {k: v.to(dtype) for k, v in to_diffusers(load_file(str(path))).items()}
    expected = dict(model.state_dict())
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise UserError(f"base {path}: its transformer does not match the config of the diffusers folder beside it "
                        f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another shape; "
                        f"first: {first}); put the file beside the diffusers folder of the same FLUX.1 model")
    model.load_state_dict(state, assign=True)
    return model.eval()
