"""`lora-diffusion caption FOLDER`: write a caption beside every image that has none, with a vision-language model."""

from __future__ import annotations

import argparse
import sys
import time


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..data.captioner import DEFAULT_MODEL

    parser = subparsers.add_parser(
        "caption",
        help="caption a folder of images with a vision-language model (.txt beside each image)",
        description="Write a caption beside every image of FOLDER that has none (existing captions are kept "
                    "unless --overwrite), with a vision-language model through transformers. Stopped runs resume: "
                    "captioned images are skipped.",
    )
    parser.add_argument("folder", metavar="FOLDER", help="folder of images (nested folders too)")
    parser.add_argument("--model", default=None,
                        help=f"hub id or local folder of a vision-language model transformers loads as "
                             f"image-text-to-text (Florence-2, BLIP, GIT, Qwen2.5-VL, SmolVLM, ...), or of a WD14 "
                             f"tagger with --tags [default: {DEFAULT_MODEL}]")
    parser.add_argument("--tags", action="store_true",
                        help="danbooru-style tags from a WD14 tagger (onnxruntime) instead of sentences; --model is "
                             "then a tagger's hub id or folder (model.onnx + selected_tags.csv) [default tagger: "
                             "SmilingWolf/wd-swinv2-tagger-v3]")
    parser.add_argument("--threshold", type=float, default=0.35, help="--tags: general tags at or above this [default: 0.35]")
    parser.add_argument("--character-threshold", type=float, default=0.85,
                        help="--tags: character tags at or above this [default: 0.85]")
    parser.add_argument("--for", dest="family", default=None,
                        help="the base the captions are for: flux or sd3 get long detailed captions, sd1/sd2/sdxl/"
                             "builtin short ones [default: short]")
    parser.add_argument("--trigger-word", default="", help="put in front of every caption")
    parser.add_argument("--prefix", default="", help="text before each caption (after the trigger word)")
    parser.add_argument("--suffix", default="", help="text after each caption")
    parser.add_argument("--blacklist", default="", help="comma-separated tags/phrases to drop from captions")
    parser.add_argument("--replace", action="append", default=[], metavar="OLD=NEW",
                        help="replace a word or phrase (repeatable)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="most tokens the model writes per caption [default: 77 short, 256 long]")
    parser.add_argument("--caption-extension", default=".txt", help="extension of caption files [default: .txt]")
    parser.add_argument("--overwrite", action="store_true", help="replace existing captions too")
    parser.add_argument("--dry-run", action="store_true", help="list what would be captioned; load no model")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per model call [default: 8 on a GPU, 2 on the CPU]")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... [default: cuda when there is one]")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
    return parser


def _captioner(args: argparse.Namespace):
    """(model name, what it writes, images → texts, batch size) for ``--tags`` or a vision-language model."""
    from ..errors import UserError

    if args.tags:
        from ..data.tagger import DEFAULT_TAGGER, load_tagger

        if not (0 < args.threshold <= 1 and 0 < args.character_threshold <= 1):
            raise UserError("--threshold and --character-threshold are probabilities in (0, 1]")
        model = args.model or DEFAULT_TAGGER
        tagger = load_tagger(model, args.device)
        return model, "tags", lambda images: tagger.tags(images, args.threshold, args.character_threshold), \
            args.batch_size or 4
    from ..data.captioner import DEFAULT_MODEL, detail_for, load_captioner

    model, detail = args.model or DEFAULT_MODEL, detail_for(args.family)
    captioner = load_captioner(model, args.device, args.max_length or (256 if detail == "long" else 77))
    batch = args.batch_size or (8 if captioner.device.type == "cuda" else 2)
    return model, detail, lambda images: captioner.caption(images, detail), batch


def run(args: argparse.Namespace) -> int:
    from ..data.captioning import CaptionOptions, caption_folder, images_to_caption, parse_replacements
    from ..errors import UserError

    if args.max_length is not None and not 1 <= args.max_length <= 1024:
        raise UserError(f"--max-length {args.max_length}: give 1..1024 tokens")
    if args.batch_size is not None and not 1 <= args.batch_size <= 256:
        raise UserError(f"--batch-size {args.batch_size}: give 1..256 images")
    options = CaptionOptions(args.caption_extension, args.trigger_word.strip(), args.prefix, args.suffix,
                             [b for b in args.blacklist.split(",") if b.strip()], parse_replacements(args.replace),
                             args.overwrite)
    todo, kept = images_to_caption(args.folder, options)
    print(f"{len(todo)} images to caption, {len(kept)} already captioned (kept"
          f"{'' if args.overwrite else '; --overwrite replaces them'})", file=sys.stderr)
    if args.dry_run:
        for path in todo:
            print(path)
        return 0
    if not todo:
        return 0
    started = time.time()
    model, detail, caption, batch = _captioner(args)
    loaded = time.time()
    written, skipped = caption_folder(todo, caption, options, batch, progress=not args.quiet)
    seconds = time.time() - loaded
    print(f"wrote {written} captions ({detail}) with {model} in {seconds:.0f} s "
          f"({written / max(seconds, 1e-9):.2f} images/s; model loaded in {loaded - started:.0f} s)"
          + (f"; skipped {len(skipped)} unreadable images" if skipped else ""))
    return 0
