"""Stable Diffusion's original (LDM / A1111 / ComfyUI) tensor names, from diffusers' names.

One rule set, driven by the model's own config, so it holds for SD1.x, SD2.x, SDXL and the
built-in model alike. Used to read kohya files that name UNet modules the original way
(SDXL's ``input_blocks_4_1_…``) and to write single-file checkpoints (``bake --single-file``).

Single-file prefixes: UNet ``model.diffusion_model.``, VAE ``first_stage_model.``; text encoders
``cond_stage_model.transformer.`` (SD1, Hugging Face CLIP layout), ``cond_stage_model.model.``
(SD2, OpenCLIP layout), ``conditioner.embedders.0.transformer.`` / ``conditioner.embedders.1.model.`` (SDXL).
"""

from __future__ import annotations

import re

import torch

_RESNET = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
           ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection.")]
_UNET_FIXED = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
               ("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2."),
               ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2.")]


def unet_module_to_original(path: str, config) -> str:
    """Original name of a diffusers UNet module/tensor path (``path`` may end in .weight etc.)."""
    layers = config["layers_per_block"] if isinstance(config, dict) else config.layers_per_block
    up_types = config["up_block_types"] if isinstance(config, dict) else config.up_block_types
    dotted = path + "."
    for new, old in _UNET_FIXED:
        if dotted.startswith(new):
            return (old + dotted[len(new):])[:-1]
    match = re.match(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", dotted)
    if match:
        group, block, kind, index, rest = match.group(1), int(match.group(2)), match.group(3), int(match.group(4)), match.group(5)
        if group == "down_blocks":
            if kind == "downsamplers":
                head = f"input_blocks.{(block + 1) * (layers + 1)}.0."
                rest = rest.replace("conv.", "op.", 1)
            else:
                head = f"input_blocks.{1 + block * (layers + 1) + index}.{0 if kind == 'resnets' else 1}."
        else:
            if kind == "upsamplers":
                has_attention = "CrossAttn" in up_types[block]
                head = f"output_blocks.{block * (layers + 1) + layers}.{2 if has_attention else 1}."
            else:
                head = f"output_blocks.{block * (layers + 1) + index}.{0 if kind == 'resnets' else 1}."
        if kind == "resnets":
            rest = _rename_prefix(rest, _RESNET)
        return (head + rest)[:-1]
    match = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", dotted)
    if match:
        kind, index, rest = match.group(1), int(match.group(2)), match.group(3)
        position = 1 if kind == "attentions" else (0 if index == 0 else 2)
        if kind == "resnets":
            rest = _rename_prefix(rest, _RESNET)
        return f"middle_block.{position}.{rest}"[:-1]
    return path


def _rename_prefix(rest: str, table) -> str:
    for new, old in table:
        if rest.startswith(new):
            return old + rest[len(new):]
    return rest


_VAE_RESNET = [("conv_shortcut.", "nin_shortcut.")]
_VAE_ATTENTION = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]


def vae_key_to_original(key: str, num_blocks: int) -> str:
    dotted = key
    for side in ("encoder", "decoder"):
        if not dotted.startswith(side + "."):
            continue
        rest = dotted[len(side) + 1:]
        match = re.match(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)", rest)
        if match:
            group, block, kind, index, tail = match.groups()
            level = int(block) if group == "down_blocks" else num_blocks - 1 - int(block)
            name = "down" if group == "down_blocks" else "up"
            if kind == "resnets":
                return f"{side}.{name}.{level}.block.{index}.{_rename_prefix(tail, _VAE_RESNET)}"
            sampler = "downsample" if kind == "downsamplers" else "upsample"
            return f"{side}.{name}.{level}.{sampler}.{tail}"
        match = re.match(r"mid_block\.resnets\.(\d+)\.(.*)", rest)
        if match:
            return f"{side}.mid.block_{int(match.group(1)) + 1}.{_rename_prefix(match.group(2), _VAE_RESNET)}"
        match = re.match(r"mid_block\.attentions\.0\.(.*)", rest)
        if match:
            return f"{side}.mid.attn_1.{_rename_prefix(match.group(1), _VAE_ATTENTION)}"
        if rest.startswith("conv_norm_out."):
            return f"{side}.norm_out.{rest[len('conv_norm_out.'):]}"
        return dotted
    return dotted


def _hf_clip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP text model in Hugging Face layout, under ``prefix``, with the ``text_model.`` level."""
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        name = key if key.startswith(("text_model.", "text_projection")) else "text_model." + key
        out[prefix + name] = value
    return out


def _open_clip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP text model in OpenCLIP layout (SD2, SDXL's second encoder): fused q/k/v, other names."""
    table = [("embeddings.token_embedding.weight", "token_embedding.weight"),
             ("embeddings.position_embedding.weight", "positional_embedding"),
             ("final_layer_norm.", "ln_final.")]
    layer = [("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
             ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")]
    plain = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    out: dict[str, torch.Tensor] = {}
    for key, value in plain.items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.t().contiguous()
            continue
        match = re.match(r"encoder\.layers\.(\d+)\.(.*)", key)
        if match:
            index, rest = match.groups()
            if re.match(r"self_attn\.[qkv]_proj\.", rest):
                if rest.startswith("self_attn.q_proj."):
                    kind = rest.rsplit(".", 1)[1]
                    parts = [plain[f"encoder.layers.{index}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                    out[f"{prefix}transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat(parts)
                continue
            out[f"{prefix}transformer.resblocks.{index}.{_rename_prefix(rest, layer)}"] = value
            continue
        renamed = _rename_prefix(key, table)
        out[prefix + renamed] = value
    return out


def pipeline_to_original(pipe, arch: str) -> dict[str, torch.Tensor]:
    """The whole pipeline's weights under original single-file names (for A1111 / ComfyUI)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in pipe.unet.state_dict().items():
        out["model.diffusion_model." + unet_module_to_original(key, pipe.unet.config)] = value
    blocks = len(pipe.vae.config.block_out_channels)
    for key, value in pipe.vae.state_dict().items():
        name = vae_key_to_original(key, blocks)
        if ".mid.attn_1." in name and name.endswith(".weight") and value.dim() == 2:
            value = value[:, :, None, None]  # the original VAE attention uses 1x1 convs
        out["first_stage_model." + name] = value
    if arch == "sdxl":
        out.update(_hf_clip(pipe.text_encoder.state_dict(), "conditioner.embedders.0.transformer."))
        out.update(_open_clip(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    elif arch == "sd2":
        out.update(_open_clip(pipe.text_encoder.state_dict(), "cond_stage_model.model."))
    else:
        out.update(_hf_clip(pipe.text_encoder.state_dict(), "cond_stage_model.transformer."))
    return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}


def checkpoint_architecture(keys) -> str | None:
    """sd1 / sd2 / sdxl from a single-file checkpoint's tensor names (None: not an SD checkpoint); the families
    say which names mark them (``Family.checkpoint_recognises``)."""
    from ..families import family_of_checkpoint

    family = family_of_checkpoint(keys)
    return family.name if family is not None else None
