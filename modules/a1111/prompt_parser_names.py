"""A1111's conditioning containers from `modules.prompt_parser`, and the functions that build and read them.

`get_learned_conditioning` encodes through the engine's conditioning (the loaded model's text encoders, A1111's
chunking and emphasis); the result is A1111's shape: per prompt, a list of ScheduledPromptConditioning."""
from __future__ import annotations

from collections import namedtuple

import torch

__all__ = ["ScheduledPromptConditioning", "ComposableScheduledPromptConditioning", "MulticondLearnedConditioning",
           "get_learned_conditioning", "get_multicond_learned_conditioning", "reconstruct_cond_batch",
           "reconstruct_multicond_batch", "stack_conds"]

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules = schedules
        self.weight = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape = shape  # the shape field is needed to send this object to DDIM/PLMS
        self.batch = batch


def _encode(model, texts: list[str]):
    from modules.a1111._engine import engine
    from modules.sampling import conditioning

    e = engine()
    loaded = getattr(model, "loaded_model", None) or e.models.current or e.models.get()
    clip_skip = int(e.settings.get("CLIP_stop_at_last_layers", 1) or 1)
    options = conditioning.TextOptions.from_options(lambda k, d=None: e.settings.get(k, d))
    e.embeddings.load(loaded)
    return conditioning.encode(loaded, list(texts), clip_skip, options=options, embeddings=e.embeddings)


def _rows(c, i):
    """Row i of our Conditioning as A1111 stores it: a tensor for SD1/2, a dict for SDXL."""
    cross = c.embeds[i]
    pooled = getattr(c, "pooled", None)
    if pooled is not None:
        return {"crossattn": cross, "vector": pooled[i]}
    return cross


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    from modules.prompt_parser import get_learned_conditioning_prompt_schedules

    schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)
    cache: dict = {}
    res = []
    for prompt, schedule in zip(prompts, schedules):
        key = tuple(map(tuple, schedule))
        if key not in cache:
            texts = [text for _, text in schedule]
            c = _encode(model, texts)
            cache[key] = [ScheduledPromptConditioning(end, _rows(c, i)) for i, (end, _) in enumerate(schedule)]
        res.append(cache[key])
    return res


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    from modules.prompt_parser import get_multicond_prompt_list

    res_indexes, prompt_flat_list, _ = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, prompt_flat_list, steps, hires_steps, use_old_scheduling)
    res = [[ComposableScheduledPromptConditioning(learned[i], weight) for i, weight in indexes]
           for indexes in res_indexes]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=res)


def stack_conds(tensors):
    token_count = max(x.shape[0] for x in tensors)
    out = []
    for t in tensors:
        if t.shape[0] != token_count:
            last = t[-1:].repeat(token_count - t.shape[0], 1)
            t = torch.vstack([t, last])
        out.append(t)
    return torch.stack(out)


def _pick(schedule, current_step):
    for index, entry in enumerate(schedule):
        if current_step <= entry.end_at_step:
            return index
    return len(schedule) - 1


def reconstruct_cond_batch(c, current_step):
    """The conditioning of every prompt at `current_step` (A1111's reconstruct_cond_batch)."""
    first = c[0][0].cond
    if isinstance(first, dict):
        return {key: torch.stack([schedule[_pick(schedule, current_step)].cond[key] for schedule in c])
                for key in first}
    return torch.stack([schedule[_pick(schedule, current_step)].cond for schedule in c])


def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step):
    tensors, conds_list = [], []
    for composable_prompts in c.batch:
        conds_for_batch = []
        for composable in composable_prompts:
            index = _pick(composable.schedules, current_step)
            conds_for_batch.append((len(tensors), composable.weight))
            tensors.append(composable.schedules[index].cond)
        conds_list.append(conds_for_batch)
    if isinstance(tensors[0], dict):
        stacked = {k: stack_conds([t[k] for t in tensors]) if tensors[0][k].dim() > 1 else torch.stack(
            [t[k] for t in tensors]) for k in tensors[0]}
        return conds_list, stacked
    return conds_list, stack_conds(tensors)
