"""A1111's prompt encoding: 75-token chunks, comma backtrack, BREAK, emphasis modes, padding, per-step schedules
(what the sampling loop's `conditioning_at` returns at each step), AND, and the plain case unchanged."""
from __future__ import annotations

import pytest
import torch

from modules import processing
from modules.processing import ProcessingContext, txt2img
from modules.request_types import Txt2ImgRequest
from modules.sampling import conditioning as C


@pytest.fixture(scope="module")
def sd1(load_tiny):
    return load_tiny("sd1.safetensors")


@pytest.fixture(scope="module")
def sdxl(load_tiny):
    return load_tiny("sdxl.safetensors")


def _diffusers_style(model, prompt):
    """How the plain encoder (and diffusers) encoded a prompt: one truncated, padded 77-token window."""
    ids = model.tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.inference_mode():
        return model.text_encoder(ids)[0]


def _ntokens(model, text):
    return len(model.tokenizer([text], add_special_tokens=False)["input_ids"][0])


def test_plain_prompt_is_bit_identical(sd1):
    out = C.encode(sd1, ["a photo of a cat"] * 2)
    assert out.embeds.shape == (2, 77, 64)
    assert torch.equal(out.embeds, _diffusers_style(sd1, "a photo of a cat").expand(2, -1, -1))


def test_long_prompt_chunks(sd1):
    prompt = " ".join(["cat"] * 80)
    assert _ntokens(sd1, prompt) == 80
    chunks, count = C.tokenize_line(sd1.tokenizer, prompt)
    assert len(chunks) == 2 and count == 80
    assert all(len(c.tokens) == 77 and c.tokens[0] == 49406 and c.tokens[-1] == 49407 for c in chunks)
    out = C.encode(sd1, [prompt])
    assert out.embeds.shape == (1, 154, 64)
    # each chunk is encoded on its own
    first = C.encode(sd1, [" ".join(["cat"] * 75)]).embeds
    assert torch.allclose(out.embeds[:, :77], first, atol=1e-6)
    assert C.encode(sd1, [" ".join(["cat"] * 150)]).embeds.shape[1] == 154
    assert C.encode(sd1, [" ".join(["cat"] * 151)]).embeds.shape[1] == 231


def test_comma_backtrack(sd1):
    words = ["cat"] * 70 + [","] + ["dog"] * 9  # the comma is the 71st token
    prompt = " ".join(words)
    chunks, _ = C.tokenize_line(sd1.tokenizer, prompt, comma_padding_backtrack=20)
    comma = sd1.tokenizer.get_vocab()[",</w>"]
    assert len(chunks) == 2
    assert chunks[0].tokens[71] == comma and chunks[0].tokens[72:] == [49407] * 5  # broke after the comma
    dog = sd1.tokenizer.get_vocab()["dog</w>"]
    assert chunks[1].tokens[1:10] == [dog] * 9 and chunks[1].tokens[10] == 49407
    chunks, _ = C.tokenize_line(sd1.tokenizer, prompt, comma_padding_backtrack=0)  # off: a hard cut at 75
    assert chunks[0].tokens[72:76] == [dog] * 4 and chunks[1].tokens[1:6] == [dog] * 5
    chunks, _ = C.tokenize_line(sd1.tokenizer, prompt, comma_padding_backtrack=3)  # comma too far back
    assert chunks[0].tokens[75] == dog


def test_break_starts_a_new_chunk(sd1):
    chunks, _ = C.tokenize_line(sd1.tokenizer, "a cat BREAK a dog")
    assert len(chunks) == 2
    out = C.encode(sd1, ["a cat BREAK a dog"]).embeds
    assert out.shape == (1, 154, 64)
    assert torch.allclose(out[:, :77], _diffusers_style(sd1, "a cat"), atol=1e-6)
    assert torch.allclose(out[:, 77:], _diffusers_style(sd1, "a dog"), atol=1e-6)
    # with emphasis "None" nothing is parsed: BREAK is a word
    assert C.encode(sd1, ["a cat BREAK a dog"], options=C.TextOptions(emphasis="None")).embeds.shape[1] == 77


def test_emphasis_modes(sd1):
    plain = _diffusers_style(sd1, "a cat")
    opts = lambda mode: C.TextOptions(emphasis=mode)  # noqa: E731
    ignore = C.encode(sd1, ["a (cat:1.5)"], options=opts("Ignore")).embeds
    assert torch.allclose(ignore, plain, atol=1e-6)
    chunks, _ = C.tokenize_line(sd1.tokenizer, "a (cat:1.5)")
    mult = torch.tensor(chunks[0].multipliers)
    assert mult[2] == pytest.approx(1.5) and (mult[[0, 1, 3, 4]] == 1).all()
    nonorm = C.encode(sd1, ["a (cat:1.5)"], options=opts("No norm")).embeds
    assert torch.allclose(nonorm, plain * mult[None, :, None], atol=1e-5)
    original = C.encode(sd1, ["a (cat:1.5)"], options=opts("Original")).embeds
    scaled = plain * mult[None, :, None]
    assert torch.allclose(original, scaled * (plain.mean() / scaled.mean()), atol=1e-5)
    assert original.mean().item() == pytest.approx(plain.mean().item(), abs=1e-5)  # the mean is restored
    assert not torch.allclose(original, plain, atol=1e-4)
    # "None": brackets are literal text
    assert not torch.allclose(C.encode(sd1, ["a (cat:1.5)"], options=opts("None")).embeds, plain, atol=1e-4)


def test_clip_skip_sd1(sd1):
    a = C.encode(sd1, ["a cat"], clip_skip=1).embeds
    b = C.encode(sd1, ["a cat"], clip_skip=2).embeds
    assert not torch.allclose(a, b)


def test_sdxl_both_encoders_and_pooled_from_first_chunk(sdxl):
    prompt = " ".join(["cat"] * 80)
    out = C.encode(sdxl, [prompt])
    assert out.embeds.shape == (1, 154, 64 + 128) and out.pooled.shape == (1, 128)
    first = C.encode(sdxl, [" ".join(["cat"] * 75)])
    assert torch.allclose(out.pooled, first.pooled, atol=1e-6)
    assert torch.allclose(out.embeds[:, :77], first.embeds, atol=1e-6)
    # the OpenCLIP encoder pads with "!" after the first EOS, exactly like its tokenizer
    ids = C._chunk_ids(sdxl.tokenizer_2, [C.tokenize_line(sdxl.tokenizer_2, "a cat")[0][0].tokens], "cpu")
    ref = sdxl.tokenizer_2(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(ids, ref)


def test_negative_padded_to_same_chunk_count(sd1):
    enc = lambda texts: C.encode(sd1, texts)  # noqa: E731
    long_prompt = " ".join(["cat"] * 80)
    sched = C.PromptSchedule(enc, [long_prompt], ["blurry"], 10)
    cond, uncond = sched.at(0)
    assert cond.embeds.shape == uncond.embeds.shape == (1, 154, 64)
    assert torch.allclose(uncond.embeds[:, :77], enc(["blurry"]).embeds)
    assert torch.allclose(uncond.embeds[:, 77:], enc([""]).embeds)
    # and the other way round
    cond, uncond = C.PromptSchedule(enc, ["a cat"], [long_prompt], 10).at(0)
    assert cond.embeds.shape == uncond.embeds.shape == (1, 154, 64)


# -- what the sampling loop sees per step ----------------------------------------------------------------------


def _capture(monkeypatch):
    """Replace the sampler with one that records (cond, uncond) per step and returns the start latents."""
    calls = []

    def fake_sample(job):
        steps = []
        for i in range(len(job.timesteps)):
            steps.append(job.conditioning_at(i) if job.conditioning_at else (job.cond, job.uncond))
        calls.append(steps)
        return job.latents

    monkeypatch.setattr(processing, "sample", fake_sample)
    return calls


def _run(model, **kw):
    ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None)
    req = Txt2ImgRequest(seed=1, width=64, height=64, sampler_name="Euler", **kw)
    return txt2img(ctx, req)


def _same(a, b):
    return torch.allclose(a, b, atol=1e-5)


def test_prompt_editing_changes_conditioning_at_the_right_steps(sd1, monkeypatch):
    calls = _capture(monkeypatch)
    _run(sd1, prompt="a [cat:dog:3]", negative_prompt="[blurry::0.5]", steps=8)
    steps = calls[0]
    cat, dog = C.encode(sd1, ["a cat"]).embeds, C.encode(sd1, ["a dog"]).embeds
    blurry, empty = C.encode(sd1, ["blurry"]).embeds, C.encode(sd1, [""]).embeds
    # A1111: the text ending at step 3 is used for sampler steps 0..3 (0-based), then the next one
    assert [_same(c.embeds, cat) for c, _ in steps] == [True] * 4 + [False] * 4
    assert [_same(c.embeds, dog) for c, _ in steps] == [False] * 4 + [True] * 4
    assert [_same(u.embeds, blurry) for _, u in steps] == [True] * 5 + [False] * 3
    assert all(_same(u.embeds, empty) for _, u in steps[5:])


def test_alternation_changes_every_step(sd1, monkeypatch):
    calls = _capture(monkeypatch)
    _run(sd1, prompt="a [cat|dog]", steps=6, batch_size=2)
    cat, dog = C.encode(sd1, ["a cat"]).embeds, C.encode(sd1, ["a dog"]).embeds
    seq = ["cat" if _same(c.embeds[:1], cat) else "dog" if _same(c.embeds[:1], dog) else "?" for c, _ in calls[0]]
    # schedule [[1,cat],[2,dog],[3,cat],...] looked up with A1111's 0-based step
    assert seq == ["cat", "cat", "dog", "cat", "dog", "cat"]
    assert all(c.embeds.shape[0] == 2 and torch.equal(c.embeds[0], c.embeds[1]) for c, _ in calls[0])


def test_plain_prompt_has_no_per_step_hook(sd1, monkeypatch):
    seen = []
    monkeypatch.setattr(processing, "sample", lambda job: seen.append(job) or job.latents)
    _run(sd1, prompt="a photo of a cat", negative_prompt="blurry", steps=3, batch_size=2)
    job = seen[0]
    assert job.conditioning_at is None
    assert torch.equal(job.cond.embeds, _diffusers_style(sd1, "a photo of a cat").expand(2, -1, -1))
    assert torch.equal(job.uncond.embeds, _diffusers_style(sd1, "blurry").expand(2, -1, -1))


def test_hires_pass_uses_hires_schedule(sd1, monkeypatch):
    calls = _capture(monkeypatch)
    _run(sd1, prompt="a [cat:dog:1.5]", steps=4, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=4,
         denoising_strength=1.0, hr_upscaler="Latent")
    first, hires = calls
    cat, dog = C.encode(sd1, ["a cat"]).embeds, C.encode(sd1, ["a dog"]).embeds
    assert all(_same(c.embeds, cat) for c, _ in first)  # 1.5 × 4 steps is past the first pass
    assert [_same(c.embeds, dog) for c, _ in hires] == [False, False, False, True]  # (1.5 − 1) × 4 = step 2


@pytest.mark.slow
def test_and_composable_diffusion(sd1, monkeypatch):
    seen = []
    real_sample = processing.sample

    def spy(job):
        seen.append(job.conditioning_at(0) if job.conditioning_at else (job.cond, job.uncond))
        return real_sample(job)

    monkeypatch.setattr(processing, "sample", spy)
    res = _run(sd1, prompt="a cat AND a dog:0.5", steps=3, batch_size=2)
    cond, uncond = seen[0]
    assert isinstance(cond, C.MultiConditioning)
    assert cond.owners == [0, 0, 1, 1] and cond.weights == [1.0, 0.5, 1.0, 0.5]
    assert _same(cond.embeds[0:1], C.encode(sd1, ["a cat"]).embeds)
    assert _same(cond.embeds[1:2], C.encode(sd1, [" a dog"]).embeds)
    assert uncond.embeds.shape[0] == 2
    plain = _run(sd1, prompt="a cat", steps=3, batch_size=2)
    import numpy as np
    a, b = np.asarray(res.images[0]), np.asarray(plain.images[0])
    assert a.shape == b.shape and np.isfinite(a).all() and (a != b).any()


@pytest.mark.slow
def test_and_with_single_weight_one_equals_plain(sd1):
    import numpy as np
    a = _run(sd1, prompt="a cat AND a cat", steps=3)  # A1111 de-duplicates identical parts: weight 1 + 1
    b = _run(sd1, prompt="a cat:2", steps=3)
    assert np.abs(np.asarray(a.images[0], np.int16) - np.asarray(b.images[0], np.int16)).max() <= 1


def test_sdxl_schedule_and_long_prompt_run(sdxl):
    res = _run(sdxl, prompt="a [red|blue] ball, " + " ".join(["cat"] * 80) + " AND a dog", negative_prompt="x",
               steps=2)
    assert len(res.images) == 1
