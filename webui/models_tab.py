"""The Models tab: checkpoint and VAE lists, loading, the checkpoint merger and model downloads."""
from __future__ import annotations

import html
import logging
from typing import Any

import gradio as gr

from modules import downloads
from modules.models import merge as merge_mod
from modules.models.registry import list_vaes
from webui.runner import USER_ERRORS, error_html

log = logging.getLogger(__name__)

NO_VAE = "None"
KIND_LABELS = {"Checkpoint": "checkpoint", "LoRA": "lora", "VAE": "vae", "Embedding": "embedding",
               "Upscaler (ESRGAN)": "upscaler"}


def _checkpoint_rows(engine) -> list[list[Any]]:
    rows = []
    for info in engine.registry.list():
        size = f"{info.size / 2**20:.1f} MiB" if info.size else ""
        rows.append([info.title, info.shorthash or "(hashing…)", family_label(info), size,
                     str(info.filename)])
    return rows


def family_label(info) -> str:
    """The family the checkpoint list read from the file's header (shapes only); why it can't load, if it can't."""
    if info.problem:
        return f"unreadable: {info.problem[:120]}"
    if info.is_diffusers:
        return f"diffusers folder ({info.family})" if info.family else "diffusers folder"
    return info.family or "—"


def _vae_rows(engine):
    return [[v.name, str(v.filename)] for v in list_vaes(engine.paths)]


def _note(text: str) -> str:
    return f"<div class='sd-note'>{html.escape(text)}</div>"


def run_merge(engine, primary, secondary, tertiary, mode, multiplier, custom_name, checkpoint_format, save_as_half,
              bake_in_vae, discard_weights, save_metadata, add_recipe, copy_metadata, progress=None) -> str:
    """Merge as the form says; an HTML status (the error, or where the result went)."""
    vaes = {v.name: v.filename for v in list_vaes(engine.paths)}
    if bake_in_vae and bake_in_vae != NO_VAE and bake_in_vae not in vaes:
        return error_html(f"VAE {bake_in_vae!r} not found; press 🔄 to refresh the lists")
    opts = merge_mod.MergeOptions(
        mode=mode, multiplier=float(multiplier), checkpoint_format=checkpoint_format, custom_name=custom_name or "",
        save_as_half=bool(save_as_half), bake_in_vae=vaes.get(bake_in_vae), discard_weights=discard_weights or "",
        save_metadata=bool(save_metadata), add_merge_recipe=bool(add_recipe), copy_metadata=bool(copy_metadata))

    def report(done: int, total: int, what: str) -> None:
        if progress is not None:
            progress(done / total if total else 0.0, desc=what)

    try:
        result = merge_mod.merge_from_registry(engine.registry, primary, secondary, tertiary, opts, progress=report)
    except (merge_mod.MergeError, *USER_ERRORS) as e:
        return error_html(str(e))
    except OSError as e:
        return error_html(f"merge failed: {e}")
    engine.registry.hash_all_in_background()
    kind = " (inpainting)" if result.is_inpainting else ""
    return _note(f"Saved {result.path.name}{kind} in {result.path.parent}: {result.merged_keys} tensors merged, "
                 f"{result.written_keys} written, {result.seconds:.1f} s. It is now in the checkpoint lists.")


def run_download(engine, source, repo_file, kind_label, save_as, sha256, progress=None) -> str:
    """Download as the form says; an HTML status."""
    kind = KIND_LABELS.get(kind_label, kind_label)

    def report(p: downloads.DownloadProgress) -> None:
        if progress is not None:
            progress(p.fraction if p.fraction is not None else 0.0, desc=p.describe())

    try:
        result = downloads.download_model(engine.paths, source or "", kind, repo_filename=repo_file or None,
                                          save_as=save_as or None, sha256=sha256 or None, progress=report)
    except downloads.DownloadError as e:
        return error_html(str(e))
    engine.registry.refresh()
    engine.registry.hash_all_in_background()
    resumed = f", resumed after {result.resumed_from / 2**20:.1f} MiB" if result.resumed_from else ""
    checked = ", sha256 verified" if result.sha256 else ""
    return _note(f"Downloaded {result.path.name} ({result.size / 2**20:.1f} MiB{resumed}{checked}) to "
                 f"{result.path.parent}")


def build_models(engine, on_loaded):
    gr.Markdown("### Checkpoints")
    table = gr.Dataframe(headers=["Title", "Hash", "Family", "Size", "File"], value=_checkpoint_rows(engine),
                         interactive=False, elem_id="models_checkpoints", wrap=True)
    with gr.Row():
        refresh = gr.Button("🔄 Refresh", elem_id="models_refresh")
        choice = gr.Dropdown(engine.registry.titles(), label="Checkpoint", elem_id="models_checkpoint_choice")
        load = gr.Button("Load", variant="primary", elem_id="models_load")
    status = gr.HTML(elem_id="models_status")
    gr.Markdown("### VAEs")
    vae_table = gr.Dataframe(headers=["Name", "File"], value=_vae_rows(engine), interactive=False,
                             elem_id="models_vaes")
    merger = _build_merger(engine)
    download = _build_download()

    def do_refresh():
        engine.registry.refresh()
        engine.registry.hash_all_in_background()
        titles = gr.update(choices=engine.registry.titles())
        vae_names = gr.update(choices=[NO_VAE] + [v.name for v in list_vaes(engine.paths)])
        return _checkpoint_rows(engine), titles, _vae_rows(engine), titles, titles, titles, vae_names, titles

    lists = [table, choice, vae_table, *merger["models"], merger["vae"], on_loaded]

    def do_load(title):
        if not title:
            return error_html("Choose a checkpoint first"), gr.update()
        try:
            with engine.queue.turn():  # never swap the model under a running generation
                model = engine.models.select(title)
        except USER_ERRORS as e:
            return error_html(str(e)), gr.update()
        return f"<div class='sd-note'>Loaded {html.escape(model.title)} ({html.escape(model.spec.label)})</div>", \
            gr.update(value=model.title)

    def do_merge(*values, progress=gr.Progress()):
        with engine.queue.turn():  # a merge holds two or three models in memory: not beside a generation
            note = run_merge(engine, *values, progress=progress)
        return (note, *do_refresh())

    def do_download(*values, progress=gr.Progress()):
        return (run_download(engine, *values, progress=progress), *do_refresh())

    refresh.click(do_refresh, None, lists)
    merger["refresh"].click(do_refresh, None, lists)
    # ordered by the engine's job queue; a limit in Gradio's "generate" group would hold back every Generate click
    load.click(do_load, choice, [status, on_loaded], concurrency_id="generate", concurrency_limit=None)
    merger["button"].click(do_merge, merger["inputs"], [merger["result"], *lists], concurrency_id="generate",
                           concurrency_limit=None)
    download["button"].click(do_download, download["inputs"], [download["result"], *lists],
                             concurrency_id="download", concurrency_limit=2)
    return {"refresh": refresh}


def _build_merger(engine) -> dict:
    titles = engine.registry.titles()
    with gr.Accordion("Checkpoint merger", open=True, elem_id="modelmerger"):
        with gr.Row(equal_height=True):
            a = gr.Dropdown(titles, value=None, label="Primary model (A)", elem_id="modelmerger_primary_model_name")
            b = gr.Dropdown(titles, value=None, label="Secondary model (B)", elem_id="modelmerger_secondary_model_name")
            c = gr.Dropdown(titles, value=None, label="Tertiary model (C)", elem_id="modelmerger_tertiary_model_name")
            refresh = gr.Button("🔄", elem_id="modelmerger_refresh", size="sm", min_width=40, scale=0)
        with gr.Row():
            name = gr.Textbox(label="Custom name (optional)", elem_id="modelmerger_custom_name")
            multiplier = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="Multiplier (M) - set to 0 to get model A",
                                   elem_id="modelmerger_interp_amount")
        with gr.Row():
            mode = gr.Radio(list(merge_mod.MODES), value=merge_mod.WEIGHTED_SUM, label="Interpolation Method",
                            elem_id="modelmerger_interp_method", scale=2,
                            info="Weighted sum: A·(1−M) + B·M · Add difference: A + M·(B − C) · No interpolation: A")
            fmt = gr.Radio(["ckpt", "safetensors"], value="safetensors", label="Checkpoint format",
                           elem_id="modelmerger_checkpoint_format")
            half = gr.Checkbox(False, label="Save as float16", elem_id="modelmerger_save_as_half")
        with gr.Row():
            vae = gr.Dropdown([NO_VAE] + [v.name for v in list_vaes(engine.paths)], value=NO_VAE,
                              label="Bake in VAE", elem_id="modelmerger_bake_in_vae")
            discard = gr.Textbox(label="Discard weights with matching name (regular expression)",
                                 elem_id="modelmerger_discard_weights")
        with gr.Row():
            meta = gr.Checkbox(True, label="Save metadata", elem_id="modelmerger_save_metadata")
            recipe = gr.Checkbox(True, label="Add merge recipe metadata", elem_id="modelmerger_add_recipe")
            copy = gr.Checkbox(True, label="Copy metadata from merged models", elem_id="modelmerger_copy_metadata")
        button = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
        result = gr.HTML(elem_id="modelmerger_result")
    return {"models": [a, b, c], "vae": vae, "refresh": refresh, "button": button, "result": result,
            "inputs": [a, b, c, mode, multiplier, name, fmt, half, vae, discard, meta, recipe, copy]}


def _build_download() -> dict:
    with gr.Accordion("Download a model", open=True, elem_id="models_download"):
        with gr.Row():
            source = gr.Textbox(label="URL, or Hugging Face repo id", scale=3, elem_id="models_download_source",
                                placeholder="https://…/model.safetensors  or  owner/repo")
            repo_file = gr.Textbox(label="File in the repo (Hugging Face only)", scale=2,
                                   elem_id="models_download_repo_file", placeholder="model.safetensors")
        with gr.Row():
            kind = gr.Dropdown(list(KIND_LABELS), value="Checkpoint", label="Kind", elem_id="models_download_kind")
            save_as = gr.Textbox(label="Save as (optional)", elem_id="models_download_save_as")
            sha = gr.Textbox(label="Expected sha256 (optional)", elem_id="models_download_sha256")
        gr.Markdown("Partial downloads are kept as `NAME.part` and resumed when started again. Gated Hugging Face "
                    "models need `HF_TOKEN` set before start-up.", elem_classes=["sd-note"])
        button = gr.Button("Download", variant="primary", elem_id="models_download_button")
        result = gr.HTML(elem_id="models_download_result")
    return {"button": button, "result": result, "inputs": [source, repo_file, kind, save_as, sha]}
