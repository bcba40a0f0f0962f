"""Settings of one LoRA adapter, as plain data."""

from __future__ import annotations

from dataclasses import dataclass

INIT_CHOICES = ("kaiming", "gaussian")
BIAS_CHOICES = ("none", "lora_only", "all")
NETWORK_CHOICES = ("lora", "loha", "lokr")


@dataclass(frozen=True)
class LoraConfig:
    """Rank, scale and initialisation of one adapter.

    rank: inner dimension r of B·A. alpha: the path is scaled by alpha / rank
    (kohya and PEFT convention; alpha defaults to rank, i.e. scale 1).
    init: "kaiming" (Kaiming-uniform A, as PEFT and kohya) or "gaussian" (A ~ N(0, 1/r)).
    dropout: dropout probability on the LoRA path input during training.
    bias: "none"; "lora_only" gives each wrapped layer a trainable bias delta;
    "all" also gives one to every other Linear/Conv2d with a bias in the model.
    network: "lora" (B·A), "loha" (Hadamard product of two rank-r pairs) or "lokr"
    (Kronecker product; ``factor`` splits the dimensions as LyCORIS does, -1 = most square).
    dora: add a DoRA magnitude (weight-decomposed training) to the chosen network.
    """

    rank: int = 4
    alpha: float | None = None
    init: str = "kaiming"
    dropout: float = 0.0
    bias: str = "none"
    network: str = "lora"
    dora: bool = False
    factor: int = -1

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be positive, got {self.alpha!r}")
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {', '.join(INIT_CHOICES)}, got {self.init!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.network not in NETWORK_CHOICES:
            raise ValueError(f"network must be one of {', '.join(NETWORK_CHOICES)}, got {self.network!r}")
        if not isinstance(self.factor, int) or (self.factor < 1 and self.factor != -1):
            raise ValueError(f"factor must be -1 or a positive integer, got {self.factor!r}")
        if self.bias not in BIAS_CHOICES:
            raise ValueError(f"bias must be one of {', '.join(BIAS_CHOICES)}, got {self.bias!r}")

    @property
    def effective_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)
