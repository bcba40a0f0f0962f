"""Convert the real CLIP BPE vocabulary into the files ``CLIPTokenizer`` reads.

The open-clip-torch wheel on PyPI carries OpenAI's ``bpe_simple_vocab_16e6.txt.gz``.
This writes ``vocab.json`` and ``merges.txt`` exactly as Stable Diffusion's tokenizer
folders hold them, so prompts tokenize to the same ids as with SD1.x.

    pip install --no-deps open-clip-torch
    python train_scripts/build_tokenizer.py lora_diffusion/builtin/model/tokenizer
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # the merges OpenAI's CLIP uses (vocab 49408 with 256 bytes ×2 and 2 specials)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def default_bpe_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise SystemExit("open_clip is not installed: pip install --no-deps open-clip-torch")
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


def convert(bpe_path: Path, out: Path) -> None:
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    }))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    }))
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--bpe", type=Path, default=None, help="bpe_simple_vocab_16e6.txt.gz (default: from open_clip)")
    args = parser.parse_args()
    convert(args.bpe or default_bpe_path(), args.out)


if __name__ == "__main__":
    main()
