"""Sample images during training, made by the normal txt2img code with the adapter being trained active."""
from __future__ import annotations

from pathlib import Path

from modules import fileio
from modules.jobs import JobState
from modules.training.common import TrainingError


def sample_request(config, model):
    """The txt2img request for `config.sample_prompt` at its fixed seed (checked before training starts)."""
    from modules.request_types import RequestError, Txt2ImgRequest
    from modules.sampling import samplers

    factor = model.vae_scale_factor * 8
    size = max(64, config.resolution // factor * factor)
    try:
        samplers.resolve(config.sample_sampler, None)
        return Txt2ImgRequest.from_dict({
            "prompt": config.sample_prompt, "negative_prompt": config.sample_negative_prompt,
            "seed": config.sample_seed, "steps": config.sample_steps, "cfg_scale": config.sample_cfg_scale,
            "sampler_name": config.sample_sampler, "width": size, "height": size,
            "do_not_save_samples": True, "do_not_save_grid": True,
        })
    except (RequestError, ValueError) as e:
        raise TrainingError(f"sample settings: {e}") from None


def render_sample(session, request, clip_skip: int = 1, embeddings=None):
    """One image through `processing` (same seed every time, so samples compare across steps)."""
    from modules.processing import ProcessingContext, run_request

    options = {**session.options, "textual_inversion_add_hashes_to_infotext": False,
               "CLIP_stop_at_last_layers": clip_skip}
    ctx = ProcessingContext(model=session.model, options=options, outputs=None, state=JobState(),
                            embeddings=embeddings, loras=None)
    return run_request(ctx, request).images[0]


def save_sample(image, directory: Path, name: str, step: int) -> Path:
    path = Path(directory) / f"{name}-{step:05d}.png"
    with fileio.atomic_open(path, "wb") as f:
        image.save(f, format="PNG")
    return path
