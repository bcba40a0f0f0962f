"""Natural-language captions from a vision-language model through transformers (``lora-diffusion caption``).

Any model transformers loads as ``AutoModelForImageTextToText`` works (``--model``: hub id or local folder); how it is
asked depends on its kind: Florence-2 by its task tokens, BLIP and GIT with no prompt (they only describe), chat
models (Qwen2.5-VL, SmolVLM, ...) by an instruction in their chat template. The detail level follows the base the
captions are for: short for SD1.x/SD2/SDXL (CLIP reads 75 tokens), long for FLUX and SD3 (T5 reads 256-512).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

DEFAULT_MODEL = "florence-community/Florence-2-base"  # 0.23 B parameters: good captions per size, CPU-usable
LONG_FOR = ("flux", "sd3")  # families whose T5 encoder reads long captions
INSTRUCTIONS = {"short": "Describe this image in one short sentence.",
                "long": "Describe this image in detail: subject, setting, style, colours and lighting."}
FLORENCE_TASKS = {"short": "<CAPTION>", "long": "<MORE_DETAILED_CAPTION>"}


def detail_for(family: str | None) -> str:
    """``long`` for bases whose text encoder reads long captions, else ``short``."""
    return "long" if family in LONG_FOR else "short"


@dataclass
class Captioner:
    """A loaded vision-language model and how to ask it."""

    model: object
    processor: object
    kind: str  # florence2, describe (no prompt), chat
    device: object  # torch.device
    max_new_tokens: int

    def caption(self, images: list, detail: str) -> list[str]:
        """One caption per PIL image, as plain text."""
        import torch

        inputs, prompt_tokens = self._inputs(images, detail)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        if prompt_tokens:
            out = out[:, prompt_tokens:]  # chat models echo the prompt
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    def _inputs(self, images: list, detail: str) -> tuple[dict, int]:
        if self.kind == "florence2":
            inputs = self.processor(images=images, text=[FLORENCE_TASKS[detail]] * len(images), return_tensors="pt")
            return self._to_device(inputs), 0
        if self.kind == "describe":
            return self._to_device(self.processor(images=images, return_tensors="pt")), 0
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTIONS[detail]}]}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(images=[[im] for im in images], text=[prompt] * len(images), return_tensors="pt",
                                padding=True)
        return self._to_device(inputs), inputs["input_ids"].shape[1]

    def _to_device(self, inputs) -> dict:
        import torch

        dtype = next(self.model.parameters()).dtype
        return {k: (v.to(self.device, dtype) if torch.is_floating_point(v) else v.to(self.device))
                for k, v in inputs.items()}


def load_captioner(model_id: str, device: str | None = None, max_new_tokens: int = 77) -> Captioner:
    """The model and processor of ``model_id`` (hub id or folder; the hub cache only, no download when offline):
    bf16 on a GPU, fp32 on the CPU. Without network and without a cached copy, one line says what to fetch."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        config = AutoConfig.from_pretrained(model_id)
        processor = AutoProcessor.from_pretrained(model_id)
        model = AutoModelForImageTextToText.from_pretrained(
            model_id, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    except OSError as error:
        raise UserError(f"captioner {model_id!r} is not on this machine and cannot be downloaded now "
                        f"({str(error).splitlines()[0][:120]}); fetch it once with `hf download {model_id}` "
                        "(or pass --model with a local folder)") from None
    except ValueError as error:
        raise UserError(f"captioner {model_id!r} is not a vision-language model transformers can caption with "
                        f"({str(error).splitlines()[0][:120]}); try {DEFAULT_MODEL}") from None
    kind = ("florence2" if config.model_type == "florence2" else
            "describe" if config.model_type in ("blip", "git") else "chat")
    return Captioner(model.to(device).eval(), processor, kind, device, max_new_tokens)
