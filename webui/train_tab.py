"""The Train tab: A1111's "Create embedding" and "Train embedding", plus "Train LoRA" (kohya-format output).

Training runs in a thread holding the engine's queue turn (generations wait until it ends); the page polls its
progress line, loss plot and latest sample. Interrupt saves what has been trained so far.
"""
from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
from gradio.context import Context

from modules.engine import Engine
from modules.training import dataset as ds
from modules.training.common import TrainingError, TrainingProgress
from modules.training.config import MIXED_PRECISION, EmbeddingTrainingConfig, LoraTrainingConfig
from webui.runner import USER_ERRORS, error_html

POLL_SECONDS = 0.5


def progress_html(progress: TrainingProgress | None, waiting: bool) -> str:
    if progress is None:
        return "<div class='sd-progress'><span class='sd-progress-text'>Waiting in queue…</span></div>" \
            if waiting else ""
    pct = int(progress.fraction * 100)
    return (f"<div class='sd-progress' id='train_progress_bar'><div class='sd-progress-bar' style='width:{pct}%'>"
            f"</div><span class='sd-progress-text'>{html.escape(progress.text())}</span></div>")


def native_size(engine: Engine, fallback: int = 512) -> int:
    """The picture size the selected checkpoint was made for (training at another size wastes the run): the
    loaded UNet's sample size times the VAE's scale, else what the file says (the demo model's `default_size`,
    an embedded UNet config), else SDXL's 1024 when its header has SDXL's second text encoder, else `fallback`."""
    from modules.models.manager import embedded_architecture

    try:
        info = engine.models.resolve()
    except Exception:  # noqa: BLE001 - no checkpoint yet: the config's default
        return fallback
    model = next((m for m in engine.models.loaded if str(m.filename) == str(info.filename)), None)
    if model is not None:
        try:
            scale = 2 ** (len(model.vae.config.block_out_channels) - 1)
            return int(model.unet.config.sample_size) * scale
        except (AttributeError, TypeError, ValueError):
            pass
    arch = embedded_architecture(info)
    if arch.get("default_size"):
        return int(arch["default_size"])
    unet, vae = arch.get("unet") or {}, arch.get("vae") or {}
    if isinstance(unet, dict) and unet.get("sample_size"):
        channels = vae.get("block_out_channels") if isinstance(vae, dict) else None
        return int(unet["sample_size"]) * (2 ** (len(channels) - 1) if channels else 8)
    if str(info.filename).lower().endswith(".safetensors"):
        try:
            from safetensors import safe_open

            with safe_open(str(info.filename), framework="pt") as f:
                if any(k.startswith("conditioner.embedders.1.") for k in f.keys()):
                    return 1024
        except Exception:  # noqa: BLE001 - an unreadable header: the loader reports it when it is used
            pass
    return fallback


def note_html(text: str) -> str:
    return f"<div class='sd-note'>{html.escape(text)}</div>"


def stream_training(engine: Engine, job: str, train: Callable, build_config: Callable[[], Any]) -> Iterator[tuple]:
    """Yield (progress html, status html, loss plot, sample) while `train(session, config)` runs in a thread."""
    from modules.training.session import engine_session

    try:
        config = build_config()
        config.validate()
    except (TrainingError, ValueError, TypeError) as e:
        yield "", error_html(str(e)), gr.update(), gr.update()
        return
    box: dict[str, Any] = {"progress": None}

    def work():
        try:
            with engine_session(engine, job, on_progress=lambda p: box.__setitem__("progress", p)) as session:
                box["result"] = train(session, config)
        except (TrainingError, *USER_ERRORS) as e:
            box["error"] = str(e)
        except Exception as e:  # noqa: BLE001 - a failed run is reported; the server keeps running
            box["error"] = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=work, name=f"ui-{job}", daemon=True)
    thread.start()
    shown_plot = shown_sample = None
    while thread.is_alive():
        thread.join(POLL_SECONDS)
        progress = box["progress"]
        plot = sample = gr.update()
        if progress is not None and progress.loss_plot and progress.loss_plot != shown_plot:
            shown_plot, plot = progress.loss_plot, str(progress.loss_plot)
        if progress is not None and progress.sample and progress.sample != shown_sample:
            shown_sample, sample = progress.sample, str(progress.sample)
        yield progress_html(progress, True), gr.update(), plot, sample
    progress = box["progress"]
    if "error" in box:
        yield progress_html(progress, False), error_html(box["error"]), gr.update(), gr.update()
        return
    result = box["result"]
    what = "Interrupted after" if result.interrupted else "Finished"
    status = note_html(f"{what} {result.steps_done} steps; saved {result.output}")
    yield (progress_html(progress, False), status,
           str(result.loss_plot) if result.loss_plot else gr.update(),
           str(result.samples[-1]) if result.samples else gr.update())


def _embedding_names(engine: Engine) -> list[str]:
    folder = Path(engine.paths.embeddings_dir)
    return sorted(p.stem for p in folder.rglob("*.safetensors")) if folder.is_dir() else []


def _template_dirs(engine: Engine) -> list[Path]:
    return [Path(engine.paths.data_dir) / ds.TEMPLATE_DIR_NAME]


def _common_controls(prefix: str, defaults) -> dict[str, Any]:
    """Dataset, steps, rates and sample settings both trainers share (A1111's labels)."""
    c: dict[str, Any] = {}
    c["dataset_dir"] = gr.Textbox(label="Dataset directory", placeholder="folder with images (+ image.txt captions)",
                                  elem_id=f"{prefix}_dataset_dir")
    with gr.Row():
        c["learning_rate"] = gr.Number(label="Learning rate", value=defaults.learning_rate,
                                       elem_id=f"{prefix}_learning_rate")
        c["batch_size"] = gr.Number(label="Batch size", value=defaults.batch_size, precision=0, minimum=1,
                                    elem_id=f"{prefix}_batch_size")
        c["steps"] = gr.Number(label="Max steps", value=defaults.steps, precision=0, minimum=1,
                               elem_id=f"{prefix}_steps")
        c["resolution"] = gr.Number(label="Resolution", value=defaults.resolution, precision=0, minimum=8,
                                    elem_id=f"{prefix}_resolution")
    with gr.Row():
        c["save_every"] = gr.Number(label="Save every N steps (0: at the end)", value=500, precision=0, minimum=0,
                                    elem_id=f"{prefix}_save_every")
        c["sample_every"] = gr.Number(label="Sample image every N steps (0: off)", value=500, precision=0,
                                      minimum=0, elem_id=f"{prefix}_sample_every")
        c["seed"] = gr.Number(label="Seed", value=0, precision=0, elem_id=f"{prefix}_seed")
    c["sample_prompt"] = gr.Textbox(label="Sample prompt", elem_id=f"{prefix}_sample_prompt")
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            c["enable_buckets"] = gr.Checkbox(label="Aspect-ratio buckets", value=True,
                                              elem_id=f"{prefix}_enable_buckets")
            c["gradient_checkpointing"] = gr.Checkbox(label="Gradient checkpointing", value=False,
                                                      elem_id=f"{prefix}_gradient_checkpointing")
            c["mixed_precision"] = gr.Dropdown(list(MIXED_PRECISION), value=defaults.mixed_precision,
                                               label="Mixed precision (GPU)", elem_id=f"{prefix}_mixed_precision")
            c["resume"] = gr.Checkbox(label="Resume from the saved state", value=True, elem_id=f"{prefix}_resume")
        with gr.Row():
            c["sample_steps"] = gr.Number(label="Sample steps", value=20, precision=0, minimum=1,
                                          elem_id=f"{prefix}_sample_steps")
            c["sample_seed"] = gr.Number(label="Sample seed", value=1, precision=0, elem_id=f"{prefix}_sample_seed")
            c["caption_extension"] = gr.Textbox(label="Caption extension", value=".txt",
                                                elem_id=f"{prefix}_caption_extension")
    return c


def build_train(engine: Engine) -> dict[str, Any]:
    from modules.training.embedding_trainer import create_embedding, train_embedding
    from modules.training.lora_trainer import train_lora

    templates = ds.template_names(_template_dirs(engine))
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Tabs(elem_id="train_tabs"):
                with gr.Tab("Create embedding", elem_id="train_create_embedding"):
                    new_name = gr.Textbox(label="Name", elem_id="train_new_embedding_name")
                    init_text = gr.Textbox(label="Initialization text", value="*", elem_id="train_initialization_text")
                    vectors = gr.Slider(1, 75, value=1, step=1, label="Number of vectors per token",
                                        elem_id="train_nvpt")
                    overwrite = gr.Checkbox(label="Overwrite Old Embedding", value=False,
                                            elem_id="train_overwrite_old_embedding")
                    create = gr.Button("Create embedding", variant="primary", elem_id="train_create_embedding_button")
                with gr.Tab("Train embedding", elem_id="train_train_embedding"):
                    with gr.Row():
                        emb_name = gr.Dropdown(_embedding_names(engine), label="Embedding",
                                               allow_custom_value=True, elem_id="train_embedding", scale=4)
                        emb_refresh = gr.Button("🔄", size="sm", min_width=40, scale=0,
                                                elem_id="train_refresh_embeddings")
                    with gr.Row():
                        emb_template = gr.Dropdown(templates, value="subject_filewords", allow_custom_value=True,
                                                   label="Prompt template", elem_id="train_embedding_template")
                        emb_vectors = gr.Number(label="Vectors per token (new embeddings)", value=1, precision=0,
                                                minimum=1, maximum=75, elem_id="train_embedding_vectors")
                    emb_controls = _common_controls("train_embedding", EmbeddingTrainingConfig())
                    emb_train = gr.Button("Train Embedding", variant="primary", elem_id="train_train_embedding_button")
                with gr.Tab("Train LoRA", elem_id="train_train_lora"):
                    with gr.Row():
                        lora_name = gr.Textbox(label="Output name", elem_id="train_lora_name")
                        trigger = gr.Textbox(label="Trigger word", elem_id="train_lora_trigger")
                        lora_template = gr.Dropdown([""] + templates, value="", allow_custom_value=True,
                                                    label="Prompt template (empty: captions)",
                                                    elem_id="train_lora_template")
                    with gr.Row():
                        rank = gr.Number(label="Rank (network dim)", value=8, precision=0, minimum=1,
                                         elem_id="train_lora_rank")
                        alpha = gr.Number(label="Alpha", value=8, minimum=0.001, elem_id="train_lora_alpha")
                        train_unet = gr.Checkbox(label="Train UNet", value=True, elem_id="train_lora_unet")
                        train_te = gr.Checkbox(label="Train text encoder", value=False, elem_id="train_lora_te")
                    lora_controls = _common_controls("train_lora", LoraTrainingConfig())
                    lora_train = gr.Button("Train LoRA", variant="primary", elem_id="train_train_lora_button")
        with gr.Column(scale=2):
            progress = gr.HTML(elem_id="train_progress")
            status = gr.HTML(elem_id="train_status")
            interrupt = gr.Button("Interrupt", elem_id="train_interrupt")
            loss_plot = gr.Image(label="Loss", show_label=False, type="filepath", format="png", interactive=False,
                                 elem_id="train_loss_plot")
            sample = gr.Image(label="Latest sample", type="filepath", format="png", interactive=False,
                              elem_id="train_sample")

    def do_create(name, text, n, replace):
        try:
            with engine.queue.turn():
                model = engine.models.get()
                path = create_embedding(model, Path(engine.paths.embeddings_dir), name or "", int(n), text or "",
                                        overwrite=bool(replace))
        except (TrainingError, *USER_ERRORS) as e:
            return error_html(str(e)), gr.update()
        return note_html(f"Created {path}"), gr.update(choices=_embedding_names(engine), value=path.stem)

    def values(controls: dict[str, Any], args: tuple) -> dict[str, Any]:
        data = {k: v for k, v in zip(controls, args) if v is not None}
        if "sample_prompt" in data and not data["sample_prompt"].strip():
            data["sample_every"] = 0
        return data

    def do_train_embedding(name, template, n, *args):
        data = {**values(emb_controls, args), "output_name": name or "", "template": template or "",
                "num_vectors": n or 1}
        yield from stream_training(engine, "train-embedding", train_embedding,
                                   lambda: EmbeddingTrainingConfig.from_dict(data))

    def do_train_lora(name, trig, template, r, a, unet, te, *args):
        data = {**values(lora_controls, args), "output_name": name or "", "trigger_word": trig or "",
                "template": template or "", "rank": r or 0, "alpha": a or 0, "train_unet": unet,
                "train_text_encoder": te}
        yield from stream_training(engine, "train-lora", train_lora, lambda: LoraTrainingConfig.from_dict(data))

    def do_interrupt():
        if engine.state.job.startswith("train"):
            engine.interrupt()
            return note_html("Interrupting: saving what has been trained so far…")
        return note_html("Nothing is training.")

    outputs = [progress, status, loss_plot, sample]
    demo = Context.root_block
    if demo is not None:  # each page load: the selected model's own size, not 512 for every model
        demo.load(lambda: [native_size(engine)] * 2, None,
                  [emb_controls["resolution"], lora_controls["resolution"]], queue=False, show_progress="hidden")
    create.click(do_create, [new_name, init_text, vectors, overwrite], [status, emb_name])
    emb_refresh.click(lambda: gr.update(choices=_embedding_names(engine)), None, emb_name, queue=False)
    emb_train.click(do_train_embedding, [emb_name, emb_template, emb_vectors] + list(emb_controls.values()),
                    outputs, concurrency_id="train")
    lora_train.click(do_train_lora, [lora_name, trigger, lora_template, rank, alpha, train_unet, train_te]
                     + list(lora_controls.values()), outputs, concurrency_id="train")
    interrupt.click(do_interrupt, None, status, queue=False)
    return {"interrupt": interrupt, "train_lora": lora_train, "train_embedding": emb_train, "create": create}
