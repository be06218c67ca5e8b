"""`python -m modules.cli train-lora|train-embedding --config FILE [--dataset-dir DIR] [--output-name NAME]
[--steps N] [--ckpt CHECKPOINT] [--data-dir DATA]`: the same trainers as the Train tab, from a JSON/TOML config.

Progress lines go to stderr, the result as JSON to stdout. Ctrl-C interrupts: the state so far is saved (a later
run with the same name resumes from it); a second Ctrl-C quits at once. Exit status: 0 done (also when
interrupted), 2 bad input, 1 model errors.
"""
from __future__ import annotations

import json
import signal
import sys
import time

MODES = ("train-lora", "train-embedding")  # torch is imported only when one runs, so `--help` stays quick


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None, help="train-*: JSON or TOML file with the training settings")
    parser.add_argument("--dataset-dir", default=None, help="train-*: folder of training images (overrides config)")
    parser.add_argument("--output-name", default=None, help="train-*: LoRA/embedding name (overrides config)")
    parser.add_argument("--steps", type=int, default=None, help="train-*: number of steps (overrides config)")


def load_config(args):
    from modules.training.config import EmbeddingTrainingConfig, LoraTrainingConfig

    cls = LoraTrainingConfig if args.mode == "train-lora" else EmbeddingTrainingConfig
    overrides = {"dataset_dir": args.dataset_dir, "output_name": args.output_name, "steps": args.steps}
    if args.config:
        return cls.from_file(args.config, **overrides)
    return cls.from_dict({k: v for k, v in overrides.items() if v is not None})


def progress_printer(every_s: float = 1.0):
    """Print a progress line at most every `every_s` seconds, and always the ones with news (saved, sample, done)."""
    last = [0.0]

    def show(progress) -> None:
        now = time.monotonic()
        if progress.message or progress.saved or progress.sample or now - last[0] >= every_s:
            last[0] = now
            print(progress.text(), file=sys.stderr, flush=True)

    return show


def run(args, engine) -> int:
    """Train with `engine` (already created from the flags); returns the exit status."""
    from modules.models.detect import UnsupportedModelError
    from modules.models.loader import ModelLoadError
    from modules.models.manager import ModelNotFoundError
    from modules.training.common import TrainingError
    from modules.training.embedding_trainer import train_embedding
    from modules.training.lora_trainer import train_lora
    from modules.training.session import engine_session

    try:
        config = load_config(args)
        config.validate()
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    train = train_lora if args.mode == "train-lora" else train_embedding
    def on_ctrl_c(*_):
        if engine.state.interrupted:
            raise KeyboardInterrupt
        engine.interrupt()
        print("interrupting: saving the state so far (Ctrl-C again quits without saving)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        with engine_session(engine, args.mode, args.ckpt, on_progress=progress_printer()) as session:
            result = train(session, config)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ModelNotFoundError, ModelLoadError, UnsupportedModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    print(json.dumps({
        "output": str(result.output), "steps": result.steps_done, "interrupted": result.interrupted,
        "final_loss": result.losses[-1] if result.losses else None,
        "loss_plot": str(result.loss_plot) if result.loss_plot else None,
        "samples": [str(p) for p in result.samples], "resume_file": str(result.resume_file),
    }, indent=2))
    return 0
