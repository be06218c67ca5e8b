"""Textual inversion (A1111's "Create embedding" and "Train embedding" under the Train tab).

An embedding is N new token vectors, used in prompts by its file name. Created from an init text (the token
embeddings of its tokens, repeated or cut to N, as A1111 does; zeros for an empty text), then trained on the
images with everything else frozen: only the N vectors get gradients. Saved as A1111-readable `.safetensors` in
`embeddings/`: `emb_params` (N, width), or `clip_l` + `clip_g` for SDXL.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from modules.networks.embeddings import Embedding, parse_embedding_data
from modules.training import dataset as ds
from modules.training import resume
from modules.training.common import (Stepper, TrainingError, TrainingResult, autocast_dtype, mse,
                                     noise_scheduler, noisy_latents_and_target, precision)
from modules.training.config import EmbeddingTrainingConfig
from modules.training.lora_trainer import training_mode, unet_prediction
from modules.training.loop import LoopHooks, run_loop
from modules.training.samples import render_sample, sample_request
from modules.training.text_encoding import EmbeddingOverlay, encode_text

OTHER_EXTENSIONS = (".pt", ".bin", ".ckpt")


def encoders(model) -> list[tuple[str, object, torch.nn.Module]]:
    """(file key, tokenizer, text encoder): `emb_params` for one encoder, `clip_l`/`clip_g` for SDXL's two."""
    if model.text_encoder is not None and model.text_encoder_2 is not None:
        return [("clip_l", model.tokenizer, model.text_encoder), ("clip_g", model.tokenizer_2, model.text_encoder_2)]
    if model.text_encoder is not None:
        return [("emb_params", model.tokenizer, model.text_encoder)]
    return [("emb_params", model.tokenizer_2, model.text_encoder_2)]


def init_vectors(tokenizer, text_encoder, init_text: str, num_vectors: int) -> torch.Tensor:
    """A1111's `create_embedding`: vector i is the init text's token embedding number i·tokens // N."""
    table = text_encoder.get_input_embeddings().weight
    vec = torch.zeros((num_vectors, table.shape[1]), dtype=torch.float32)
    ids = tokenizer([init_text], truncation=False, add_special_tokens=False)["input_ids"][0] if init_text else []
    if ids:
        embedded = table[torch.tensor(ids, device=table.device)].detach().float().cpu()
        for i in range(num_vectors):
            vec[i] = embedded[i * embedded.shape[0] // num_vectors]
    return vec


def embedding_path(directory: Path, name: str) -> Path:
    name = name.strip()
    if not name or any(c in name for c in '/\\:*?"<>|') or name.startswith(".") or name.endswith("."):
        raise TrainingError(f"{name!r} cannot be used as an embedding name (it is also the file name)")
    return Path(directory) / f"{name}.safetensors"


def save_embedding(path: Path, vectors: dict[str, torch.Tensor], model, step: int, init_text: str = "") -> Path:
    from safetensors.torch import save

    from modules import fileio

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in vectors.items()}
    meta = {"name": path.stem, "step": str(step), "sd_checkpoint": model.shorthash or "",
            "sd_checkpoint_name": model.name, "init_text": init_text}
    return fileio.atomic_write_bytes(path, save(tensors, metadata=meta))


def create_embedding(model, directory: Path, name: str, num_vectors: int = 1, init_text: str = "*",
                     overwrite: bool = False) -> Path:
    path = embedding_path(directory, name)
    if not 1 <= int(num_vectors) <= 75:
        raise TrainingError("vectors per token must be between 1 and 75")
    clash = [p for p in [path] + [path.with_suffix(e) for e in OTHER_EXTENSIONS] if p.exists()]
    if clash and not (overwrite and clash == [path]):
        raise TrainingError(f"embedding {clash[0].name} already exists" +
                            ("" if overwrite else "; tick overwrite to replace it"))
    vectors = {key: init_vectors(tok, te, init_text, int(num_vectors)) for key, tok, te in encoders(model)}
    return save_embedding(path, vectors, model, 0, init_text)


def _load_vectors(path: Path, model) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        emb = parse_embedding_data(load_file(str(path), device="cpu"), path.stem, path)
    except Exception as e:  # noqa: BLE001 - a damaged file is the user's to fix; say which
        raise TrainingError(f"cannot read embedding {path.name}: {e}") from None
    keys = encoders(model)
    vectors = emb.vec if isinstance(emb.vec, dict) else {"emb_params": emb.vec}
    for key, _, te in keys:
        width = te.get_input_embeddings().weight.shape[1]
        if key not in vectors or vectors[key].shape[-1] != width:
            raise TrainingError(f"embedding {path.name} was made for another kind of model than {model.name} "
                                f"(needs {key} of width {width})")
    return {key: vectors[key] for key, _, _ in keys}


def _embedding(name: str, path: Path, params: dict[str, torch.Tensor]) -> Embedding:
    vec = params["emb_params"] if "emb_params" in params else {"clip_l": params["clip_l"], "clip_g": params["clip_g"]}
    n = next(iter(params.values())).shape[0]
    return Embedding(name, path, vec, sum(int(p.shape[-1]) for p in params.values()), n)


def train_embedding(session, config: EmbeddingTrainingConfig) -> TrainingResult:
    config.validate()
    model, paths = session.model, session.paths
    name = config.output_name.strip()
    path = embedding_path(Path(paths.embeddings_dir), name)
    log_dir = session.log_dir("embedding", name)
    resume_path = log_dir / resume.FILE_NAME

    images = ds.scan_folder(config.dataset_dir, config.caption_extension)
    template = ds.CaptionTemplate.resolve(config.template or "subject_filewords",
                                          [Path(paths.data_dir) / ds.TEMPLATE_DIR_NAME])
    sample_req = sample_request(config, model) if config.sample_prompt.strip() else None
    if not path.exists():
        create_embedding(model, path.parent, name, config.num_vectors, config.init_text)
    vectors = _load_vectors(path, model)
    generator = torch.Generator().manual_seed(int(config.seed))
    rng = random.Random(config.seed)
    session.use_cpu_threads(config.resolution, config.batch_size)
    data = ds.encode_images(model, images, config.resolution, config.enable_buckets, config.bucket_step, generator)

    device = model.device
    params = {k: torch.nn.Parameter(v.to(device, torch.float32)) for k, v in vectors.items()}
    embedding = _embedding(name, path, params)
    signature = {"kind": "embedding", "model": model.name, "vectors": embedding.vectors,
                 "widths": [int(p.shape[-1]) for p in params.values()]}
    state = resume.load_state(resume_path, signature) if config.resume else None
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.learning_rate, weight_decay=0.0)
    amp = autocast_dtype(device, model.dtype, config.mixed_precision)
    stepper = Stepper(optimizer, list(params.values()), amp, device, max_grad_norm=0.0)
    scheduler = noise_scheduler(model.scheduler_config)
    overlay = EmbeddingOverlay(embedding)
    losses: list[float] = []
    start = 0
    if state is not None:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state["tensors"][k])
        optimizer.load_state_dict(state["optimizer"])
        resume.restore_rng(state, generator, rng)
        losses, start = list(state["losses"]), int(state["step"])

    def step(n: int) -> float:
        bucket, latents, filewords = data.batch(config.batch_size, generator)
        captions = [template.fill(name, fw, rng) for fw in filewords]
        latents = latents.to(device, model.dtype)
        with precision(device, amp):
            cond = encode_text(model, captions, config.clip_skip, embeddings=overlay)
            noisy, timesteps, target = noisy_latents_and_target(scheduler, latents, generator)
            loss = mse(unet_prediction(model, noisy, timesteps, cond, bucket.size), target)
        stepper.step(loss)
        return float(loss.detach())

    def save(n: int) -> Path:
        save_embedding(path, params, model, n, config.init_text)
        resume.save_state(resume_path, step=n, tensors=params, optimizer=optimizer, losses=losses,
                          generator=generator, rng=rng, signature=signature)
        return path

    def sample(n: int):
        return render_sample(session, sample_req, config.clip_skip,
                             embeddings=EmbeddingOverlay(embedding, session.embeddings))

    with training_mode(model, config.gradient_checkpointing, train_text_encoder=False):
        outcome = run_loop(session, config, log_dir, start, losses,
                           LoopHooks(step=step, save=save, sample=sample if sample_req is not None else None))
    return TrainingResult(output=path, steps_done=outcome.steps_done, losses=losses,
                          interrupted=outcome.interrupted, samples=outcome.samples, loss_plot=outcome.loss_plot,
                          resume_file=resume_path)


__all__ = ["create_embedding", "train_embedding", "init_vectors", "save_embedding", "embedding_path"]
