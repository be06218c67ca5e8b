"""Textual inversion: every file format, vectors spliced into the right places, SDXL clip_l/clip_g, skipped files
with reasons, refresh, and "TI hashes" in the infotext."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules.networks.embeddings import EmbeddingDatabase
from modules.sampling import conditioning as C


def _pt(path, vec):
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "whatever", "step": 100,
                "sd_checkpoint": "abc", "sd_checkpoint_name": "model"}, path)


@pytest.fixture
def emb_dir(tmp_path):
    g = torch.Generator().manual_seed(0)
    d = tmp_path / "embeddings"
    (d / "sub").mkdir(parents=True)
    _pt(d / "cat.pt", torch.randn(2, 64, generator=g))  # a vocabulary word as name, 2 vectors
    save_file({"emb_params": torch.randn(3, 64, generator=g)}, str(d / "myemb.safetensors"))
    torch.save({"<concept>": torch.randn(64, generator=g)}, d / "concept.bin")  # diffusers concept, 1-D
    _pt(d / "sub" / "nested.pt", torch.randn(1, 64, generator=g))
    save_file({"clip_l": torch.randn(2, 64, generator=g), "clip_g": torch.randn(2, 128, generator=g)},
              str(d / "xlemb.safetensors"))
    _pt(d / "wide.pt", torch.randn(1, 96, generator=g))
    (d / "broken.pt").write_bytes(b"not a torch file at all")
    return d


def _layer0_inputs(te):
    """Capture what the first transformer layer receives (token + position embeddings)."""
    seen = []
    layer = te.text_model.encoder.layers[0] if hasattr(te, "text_model") else te.encoder.layers[0]
    handle = layer.register_forward_pre_hook(lambda m, args, kwargs=None: seen.append(args[0].clone()))
    return seen, handle


def _token_part(te, x):
    emb = te.text_model.embeddings if hasattr(te, "text_model") else te.embeddings
    return x - emb.position_embedding.weight[: x.shape[1]]


def test_formats_and_skips_for_sd1(emb_dir, load_tiny):
    model = load_tiny("sd1.safetensors")
    db = EmbeddingDatabase(emb_dir)
    db.load(model)
    assert set(db.word_embeddings) == {"cat", "myemb", "concept", "nested"}
    assert {n: db.word_embeddings[n].vectors for n in db.word_embeddings} == {"cat": 2, "myemb": 3, "concept": 1,
                                                                              "nested": 1}
    assert set(db.skipped_reasons) == {"xlemb", "wide", "broken"}
    assert "96" in db.skipped_reasons["wide"] and "64" in db.skipped_reasons["wide"]
    assert "clip_l" in db.skipped_reasons["xlemb"] or "192" in db.skipped_reasons["xlemb"]
    assert "could not load" in db.skipped_reasons["broken"]
    assert db.word_embeddings["cat"].step == 100


def test_print_at_load_lists_the_usable_and_skipped_embeddings_once(emb_dir, load_tiny, capsys):
    """A1111's "Print a list of Textual Inversion embeddings when loading model"."""
    model = load_tiny("sd1.safetensors")
    db = EmbeddingDatabase(emb_dir)
    db.load(model)
    assert capsys.readouterr().out == ""
    db.load(model, announce=True)
    out = capsys.readouterr().out
    assert "Textual inversion embeddings loaded(4): " in out and "Textual inversion embeddings skipped(" in out
    db.load(model, announce=True)  # nothing changed: nothing printed again
    assert capsys.readouterr().out == ""


def test_vectors_are_spliced_in_and_change_the_output(emb_dir, load_tiny):
    model = load_tiny("sd1.safetensors")
    db = EmbeddingDatabase(emb_dir)
    db.load(model)
    used = {}
    te = model.text_encoder
    seen, handle = _layer0_inputs(te)
    try:
        out = C.encode(model, ["a cat and myemb"], embeddings=db, used=used).embeds
    finally:
        handle.remove()
    tokens = _token_part(te, seen[0])[0]
    cat, my = db.word_embeddings["cat"].vec, db.word_embeddings["myemb"].vec
    # BOS, "a", cat×2, "and", myemb×3
    assert torch.allclose(tokens[2:4], cat, atol=1e-5)
    assert torch.allclose(tokens[5:8], my, atol=1e-5)
    assert set(used) == {"cat", "myemb"}
    chunks, count = C.tokenize_line(model.tokenizer, "a cat and myemb", lookup=db.lookup_for(model.tokenizer))
    assert count == 1 + 2 + 1 + 3 and [(o, e.name) for o, e in chunks[0].fixes] == [(1, "cat"), (4, "myemb")]
    plain = C.encode(model, ["a cat and myemb"]).embeds
    assert not torch.allclose(out, plain, atol=1e-4)
    # the diffusers concept and nested files work too
    for name in ("concept", "nested"):
        seen, handle = _layer0_inputs(te)
        try:
            C.encode(model, [f"x {name}"], embeddings=db)
        finally:
            handle.remove()
        assert torch.allclose(_token_part(te, seen[0])[0][2], db.word_embeddings[name].vec[0], atol=1e-5)


def test_embedding_does_not_straddle_chunks(emb_dir, load_tiny):
    model = load_tiny("sd1.safetensors")
    db = EmbeddingDatabase(emb_dir)
    db.load(model)
    prompt = " ".join(["dog"] * 74) + " myemb"
    chunks, _ = C.tokenize_line(model.tokenizer, prompt, lookup=db.lookup_for(model.tokenizer))
    assert len(chunks) == 2 and chunks[1].fixes[0][0] == 0 and not chunks[0].fixes


def test_sdxl_loads_clip_l_and_clip_g(emb_dir, load_tiny):
    model = load_tiny("sdxl.safetensors")
    db = EmbeddingDatabase(emb_dir)
    db.load(model)
    assert set(db.word_embeddings) == {"xlemb"}
    assert "cat" in db.skipped_reasons and "wide" in db.skipped_reasons
    emb = db.word_embeddings["xlemb"]
    captured = []
    handles = []
    for te in (model.text_encoder, model.text_encoder_2):
        seen, h = _layer0_inputs(te)
        captured.append((te, seen))
        handles.append(h)
    try:
        out = C.encode(model, ["a xlemb"], embeddings=db)
    finally:
        for h in handles:
            h.remove()
    (te1, s1), (te2, s2) = captured
    assert torch.allclose(_token_part(te1, s1[0])[0][2:4], emb.vec["clip_l"], atol=1e-5)
    assert torch.allclose(_token_part(te2, s2[0])[0][2:4], emb.vec["clip_g"], atol=1e-5)
    plain = C.encode(model, ["a xlemb"])
    assert not torch.allclose(out.embeds, plain.embeds, atol=1e-4)
    assert not torch.allclose(out.pooled, plain.pooled, atol=1e-4)


def test_refresh_picks_up_new_files(emb_dir, load_tiny):
    model = load_tiny("sd1.safetensors")
    db = EmbeddingDatabase(emb_dir)
    db.load(model)
    assert "fresh" not in db
    save_file({"emb_params": torch.ones(1, 64)}, str(emb_dir / "fresh.safetensors"))
    db.load(model)  # sees the folder changed
    assert "fresh" in db
    (emb_dir / "fresh.safetensors").unlink()
    db.refresh(model)
    assert "fresh" not in db


@pytest.mark.slow
def test_generation_uses_embedding_and_writes_ti_hashes(engine, data_dir):
    d = data_dir / "embeddings"
    d.mkdir(exist_ok=True)
    save_file({"emb_params": torch.randn(2, 64, generator=torch.Generator().manual_seed(3)) * 5},
              str(d / "style.safetensors"))
    digest = hashlib.sha256((d / "style.safetensors").read_bytes()).hexdigest()[:12]
    base = dict(seed=5, steps=3, width=64, height=64, negative_prompt="", do_not_save_samples=True,
                do_not_save_grid=True)
    with_ti = engine.txt2img(dict(prompt="a photo, style", **base))
    assert f"TI hashes: \"style: {digest}\"" in with_ti.info or f"TI hashes: style: {digest}" in with_ti.info
    (d / "style.safetensors").unlink()  # refresh: now the word is plain text
    without = engine.txt2img(dict(prompt="a photo, style", **base))
    assert "TI hashes" not in without.info
    assert (np.asarray(with_ti.images[0]) != np.asarray(without.images[0])).any()


def test_emphasis_infotext(engine):
    base = dict(seed=5, steps=2, width=64, height=64, do_not_save_samples=True, do_not_save_grid=True)
    res = engine.txt2img(dict(prompt="a (cat:1.3)", override_settings={"emphasis": "No norm"}, **base))
    assert "Emphasis: No norm" in res.info
    assert "Emphasis" not in engine.txt2img(dict(prompt="a (cat:1.3)", **base)).info
