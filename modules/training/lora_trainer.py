"""LoRA training on the user's images: PEFT LoRA layers on the loaded model's UNet and/or text encoder(s),
trained with the model's own noise schedule, saved as a kohya `.safetensors` in `models/Lora`.

The PEFT layers are injected into the live model for the run and always taken out again afterwards (the model
object is shared with generation), leaving the original modules and weights untouched.
"""
from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from modules.training import dataset as ds
from modules.training import kohya_format as kf
from modules.training import resume
from modules.training.common import (Stepper, TrainingError, TrainingResult, autocast_dtype, mse,
                                     noise_scheduler, noisy_latents_and_target, precision)
from modules.training.config import LoraTrainingConfig
from modules.training.loop import LoopHooks, run_loop
from modules.training.samples import render_sample, sample_request
from modules.training.text_encoding import encode_text

ADAPTER = "sd_lora_training"


@contextmanager
def lora_adapters(model, targets: list[kf.LoraTarget], rank: int, alpha: float, seed: int = 0):
    """Inject PEFT LoRA layers (float32, B = 0 so the model starts unchanged; A drawn from `seed`, so a run is
    reproducible); yield {target: (A, B) modules}."""
    from diffusers.utils.peft_utils import recurse_remove_peft_layers
    from peft import LoraConfig, inject_adapter_in_model

    by_component: dict[str, list[kf.LoraTarget]] = {}
    for t in targets:
        by_component.setdefault(t.component, []).append(t)
    injected = []
    generator = torch.Generator().manual_seed(int(seed))
    try:
        layers = {}
        for component, items in by_component.items():
            net = getattr(model, component)
            config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=[t.module for t in items],
                                init_lora_weights=True, lora_dropout=0.0)
            injected.append(net)
            inject_adapter_in_model(config, net, adapter_name=ADAPTER)
            for t in items:
                layer = net.get_submodule(t.module)
                a, b = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
                a.to(torch.float32).requires_grad_(True)
                b.to(torch.float32).requires_grad_(True)
                with torch.no_grad():
                    init = torch.empty(a.weight.shape, dtype=torch.float32)
                    torch.nn.init.kaiming_uniform_(init, a=math.sqrt(5), generator=generator)
                    a.weight.copy_(init)
                layers[t] = (a, b)
        yield layers
    finally:
        for net in injected:
            recurse_remove_peft_layers(net)
            net.requires_grad_(False)
            if "peft_config" in net.__dict__:
                del net.peft_config


@contextmanager
def training_mode(model, gradient_checkpointing: bool, train_text_encoder: bool):
    """Gradient checkpointing (and train mode, which transformers' checkpointing needs) for the run only."""
    nets = [model.unet] + ([te for te in (model.text_encoder, model.text_encoder_2) if te is not None]
                           if train_text_encoder else [])
    try:
        if gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
            for te in nets[1:]:
                _text_encoder_checkpointing(te, True)
        for net in nets:
            net.train()
        yield
    finally:
        for net in nets:
            net.eval()
        if gradient_checkpointing:
            model.unet.disable_gradient_checkpointing()
            for te in nets[1:]:
                _text_encoder_checkpointing(te, False)


def _text_encoder_checkpointing(te, on: bool) -> None:
    """transformers renamed gradient checkpointing to activation checkpointing (the old names warn)."""
    if hasattr(te, "activation_checkpointing_enable"):
        if on:
            te.activation_checkpointing_enable({"use_reentrant": False})
        else:
            te.activation_checkpointing_disable()
    elif on:
        te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        te.gradient_checkpointing_disable()


def unet_prediction(model, noisy, timesteps, cond, size: tuple[int, int]):
    """The UNet's output for a batch; SDXL also gets its pooled text and size conditioning."""
    from modules.sampling.conditioning import sdxl_time_ids

    kwargs = {}
    if model.unet.config.get("addition_embed_type") == "text_time":
        width, height = size
        kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled,
                                       "time_ids": sdxl_time_ids(model, width, height, batch=noisy.shape[0])}
    return model.unet(noisy, timesteps, encoder_hidden_states=cond.embeds, **kwargs).sample


def lora_caption(config: LoraTrainingConfig, template: ds.CaptionTemplate | None, filewords: str,
                 rng: random.Random) -> str:
    trigger = config.trigger_word.strip()
    if template is not None:
        return template.fill(trigger, filewords, rng)
    if trigger and trigger not in filewords:
        return f"{trigger}, {filewords}" if filewords else trigger
    return filewords


def train_lora(session, config: LoraTrainingConfig) -> TrainingResult:
    config.validate()
    model, paths = session.model, session.paths
    name = config.output_name.strip()
    output = Path(paths.lora_dir) / f"{name}.safetensors"
    log_dir = session.log_dir("lora", name)
    resume_path = log_dir / resume.FILE_NAME

    images = ds.scan_folder(config.dataset_dir, config.caption_extension)
    sample_req = sample_request(config, model) if config.sample_prompt.strip() else None
    template = ds.CaptionTemplate.resolve(config.template, [Path(paths.data_dir) / ds.TEMPLATE_DIR_NAME])
    generator = torch.Generator().manual_seed(int(config.seed))
    rng = random.Random(config.seed)
    session.use_cpu_threads(config.resolution, config.batch_size)
    data = ds.encode_images(model, images, config.resolution, config.enable_buckets, config.bucket_step, generator)

    targets = (kf.unet_targets(model) if config.train_unet else []) + \
              (kf.text_encoder_targets(model) if config.train_text_encoder else [])
    if not targets:
        raise TrainingError(f"no LoRA target modules found in {model.name}")
    signature = {"kind": "lora", "model": model.name, "rank": config.rank, "alpha": float(config.alpha),
                 "train_unet": config.train_unet, "train_text_encoder": config.train_text_encoder,
                 "targets": len(targets)}
    state = resume.load_state(resume_path, signature) if config.resume else None

    device = model.device
    amp = autocast_dtype(device, model.dtype, config.mixed_precision)
    scheduler = noise_scheduler(model.scheduler_config)
    te_lr = config.text_encoder_lr if config.text_encoder_lr is not None else config.learning_rate
    started_at = time.time()
    dataset_dir_name = Path(config.dataset_dir).name
    modules = "+".join(m for m, on in (("unet", config.train_unet), ("text_encoder", config.train_text_encoder))
                       if on)

    with lora_adapters(model, targets, config.rank, config.alpha, config.seed) as layers, \
            training_mode(model, config.gradient_checkpointing, config.train_text_encoder):
        groups = []
        for component, lr in (("unet", config.learning_rate), ("te", te_lr)):
            params = [p for t, (a, b) in layers.items() if (t.component == "unet") == (component == "unet")
                      for p in (a.weight, b.weight)]
            if params:
                groups.append({"params": params, "lr": lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=1e-2)
        all_params = [p for g in groups for p in g["params"]]
        stepper = Stepper(optimizer, all_params, amp, device)

        def tensors() -> dict[str, torch.Tensor]:
            return kf.lora_tensors({t: (a.weight, b.weight) for t, (a, b) in layers.items()}, config.alpha,
                                   dtype=torch.float32)

        losses: list[float] = []
        start = 0
        if state is not None:
            saved = state["tensors"]
            with torch.no_grad():
                for t, (a, b) in layers.items():
                    a.weight.copy_(saved[f"{t.kohya_name}.lora_down.weight"])
                    b.weight.copy_(saved[f"{t.kohya_name}.lora_up.weight"])
            optimizer.load_state_dict(state["optimizer"])
            resume.restore_rng(state, generator, rng)
            losses, start = list(state["losses"]), int(state["step"])

        def step(n: int) -> float:
            bucket, latents, filewords = data.batch(config.batch_size, generator)
            captions = [lora_caption(config, template, fw, rng) for fw in filewords]
            latents = latents.to(device, model.dtype)
            with precision(device, amp):
                with torch.set_grad_enabled(config.train_text_encoder):
                    cond = encode_text(model, captions, config.clip_skip)
                noisy, timesteps, target = noisy_latents_and_target(scheduler, latents, generator)
                loss = mse(unet_prediction(model, noisy, timesteps, cond, bucket.size), target)
            stepper.step(loss)
            return float(loss.detach())

        def save(n: int) -> Path:
            meta = kf.training_metadata(config, model, dataset_dir_name=dataset_dir_name,
                                        tag_frequency=ds.tag_frequency(images), num_images=len(images),
                                        bucket_info=data.bucket_info(), steps_done=n, started_at=started_at,
                                        finished_at=time.time() if n >= config.steps else None, modules=modules)
            out_tensors = tensors()
            kf.save_lora(output, {k: v.to(kf.SAVE_DTYPE) for k, v in out_tensors.items()}, meta)
            resume.save_state(resume_path, step=n, tensors=out_tensors, optimizer=optimizer, losses=losses,
                              generator=generator, rng=rng, signature=signature)
            return output

        def sample(n: int):
            return render_sample(session, sample_req, config.clip_skip)

        outcome = run_loop(session, config, log_dir, start, losses,
                           LoopHooks(step=step, save=save, sample=sample if sample_req is not None else None))
    return TrainingResult(output=output, steps_done=outcome.steps_done, losses=losses,
                          interrupted=outcome.interrupted, samples=outcome.samples, loss_plot=outcome.loss_plot,
                          resume_file=resume_path)


__all__ = ["train_lora", "lora_adapters", "unet_prediction", "lora_caption"]
