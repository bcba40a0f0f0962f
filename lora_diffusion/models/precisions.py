"""How the frozen base may be stored while a LoRA trains (names only; no torch import, so configs load fast)."""

QUANTIZED = ("fp8", "int8", "nf4")  # through torchao, Linear layers only
BASE_PRECISIONS = ("auto", "bf16", "fp16", *QUANTIZED)  # auto: the training dtype
