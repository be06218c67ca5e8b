"""Command-line client: `python -m modules.cli txt2img|img2img --data-dir DIR --request REQUEST.json [--out DIR]`.

REQUEST.json holds the same fields as A1111's /sdapi/v1/txt2img and /img2img (images as file paths, relative to
the request file, or base64). Images are written, the result info is printed as JSON; a bad request exits with
status 2 and one line on stderr.

`python -m modules.cli train-lora|train-embedding --config CONFIG.json|.toml [--dataset-dir DIR] [--ckpt NAME]`
trains a LoRA or a textual-inversion embedding (see `modules/training/command.py`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from modules.training.command import MODES as TRAIN_MODES, add_arguments as add_training_arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m modules.cli", description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["txt2img", "img2img", *TRAIN_MODES])
    p.add_argument("--request", type=Path, help="txt2img/img2img: JSON file with A1111 request fields")
    p.add_argument("--data-dir", type=Path, default=None, help="A1111 data dir (models/, outputs/, config.json)")
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--ckpt", "--checkpoint", default=None,
                   help="checkpoint title, name or hash to use (default: the configured one)")
    p.add_argument("--out", type=Path, default=None, help="also write the images here")
    p.add_argument("--use-cpu", nargs="*", default=[])
    p.add_argument("--no-half", action="store_true")
    p.add_argument("--no-half-vae", action="store_true")
    add_training_arguments(p)
    return p


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.mode in TRAIN_MODES:
        from modules.training import command

        return command.run(args, _engine(args))
    if args.request is None:
        return _fail("--request is required for txt2img/img2img")
    try:
        data = json.loads(args.request.read_text())
    except OSError as e:
        return _fail(f"cannot read request file {args.request}: {e.strerror or e}")
    except json.JSONDecodeError as e:
        return _fail(f"{args.request} is not valid JSON: {e}")

    from modules import images
    from modules.models.loader import ModelLoadError
    from modules.models.detect import UnsupportedModelError
    from modules.models.manager import ModelNotFoundError
    from modules.request_types import Img2ImgRequest, RequestError, Txt2ImgRequest

    cls = Txt2ImgRequest if args.mode == "txt2img" else Img2ImgRequest
    try:
        request = cls.from_dict(data, image_base=args.request.resolve().parent)
    except RequestError as e:
        return _fail(str(e))

    engine = _engine(args)
    try:
        if args.ckpt:
            engine.models.get(args.ckpt)
            request.override_settings = {**request.override_settings, "sd_model_checkpoint": args.ckpt}
        result = engine.generate(request)
    except (RequestError, ModelNotFoundError, ModelLoadError, UnsupportedModelError) as e:
        return _fail(str(e), 1 if not isinstance(e, RequestError) else 2)

    written = [str(p) for p in result.saved_paths]
    if args.out:
        for i, (image, text) in enumerate(zip(result.images, result.infotexts)):
            if i < result.index_of_first_image:
                continue
            seed = result.all_seeds[i - result.index_of_first_image]
            written.append(str(images.save_sample(image, args.out, seed, text)))
    info = result.js()
    info["images"] = written
    info["grid"] = str(result.grid_path) if result.grid_path else None
    info["interrupted"] = result.interrupted
    print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0


def _engine(args):
    from modules import cmd_args, devices
    from modules.engine import Engine
    from modules.models.loader import import_model_classes
    from modules.paths import Paths
    from modules.startup_heap import long_lived

    flags = ["--skip-install"]
    if args.data_dir:
        flags += ["--data-dir", str(args.data_dir)]
    if args.models_dir:
        flags += ["--models-dir", str(args.models_dir)]
    ns = cmd_args.parse_args(flags, env={})
    dc = devices.from_flags(use_cpu=args.use_cpu, no_half=args.no_half, no_half_vae=args.no_half_vae)
    with long_lived():  # the engine and the model code, before any checkpoint is read
        engine = Engine.create(Paths.from_args(ns), device_config=dc)
        import_model_classes()
    return engine


if __name__ == "__main__":
    sys.exit(main())
