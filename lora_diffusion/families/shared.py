"""Small readings of a denoiser config that several families' recognisers share."""

from __future__ import annotations


def cross_attention_dim(config: dict) -> int | None:
    """The UNet's text width (a list in some configs: the first entry)."""
    dim = config.get("cross_attention_dim")
    if isinstance(dim, (list, tuple)):
        dim = dim[0] if dim else None
    return int(dim) if dim else None
