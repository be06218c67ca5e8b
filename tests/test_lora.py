"""LoRA as A1111 users use it: `<lora:name:te:unet>` tags, kohya (diffusers and sgm names), PEFT, LoCon, LoHa, LoKr
files built here for the tiny models; weights patched exactly, combined, removed bit-exactly, no drift."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules import infotext
from modules.hashes import addnet_hash_safetensors, sha256_file
from modules.networks import extra_networks, lora

BASE = {"prompt": "a cat", "negative_prompt": "ugly", "steps": 3, "width": 64, "height": 64, "cfg_scale": 7,
        "sampler_name": "Euler", "seed": 1234, "do_not_save_grid": True, "do_not_save_samples": True}

# Sample modules of the tiny SD1 model (diffusers names) and their LDM/sgm names, written out by hand.
Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
K2 = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
PROJ_IN = "down_blocks.0.attentions.0.proj_in"  # 1x1 conv (use_linear_projection=False)
UP_V = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v"
CONV = "down_blocks.0.resnets.1.conv1"  # 3x3 conv
TE_Q = "encoder.layers.0.self_attn.q_proj"
TE_FC = "encoder.layers.1.mlp.fc1"
SGM = {
    Q: "input_blocks_1_1_transformer_blocks_0_attn1_to_q",
    K2: "input_blocks_1_1_transformer_blocks_0_attn2_to_k",
    PROJ_IN: "input_blocks_1_1_proj_in",
    UP_V: "output_blocks_3_1_transformer_blocks_0_attn1_to_v",
    CONV: "input_blocks_2_0_in_layers_2",
}


def arr(im) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.int16)


def module(model, name: str) -> torch.nn.Module:
    comp, _, dotted = name.partition(":")
    net = {"unet": model.unet, "te1": model.text_encoder, "te2": model.text_encoder_2}[comp]
    return net.get_submodule(dotted)


def weight(model, name: str) -> torch.Tensor:
    return module(model, name).weight.detach().clone()


def kohya_name(name: str, sgm: bool = False) -> str:
    comp, _, dotted = name.partition(":")
    if comp == "unet":
        return "lora_unet_" + (SGM[dotted] if sgm else dotted.replace(".", "_"))
    prefix = {"te1": "lora_te_", "te1x": "lora_te1_", "te2": "lora_te2_"}[comp]
    return prefix + "text_model_" + dotted.replace(".", "_")


class Builder:
    """Makes LoRA tensors for named modules and remembers the ΔW each should produce (computed independently)."""

    def __init__(self, model, seed: int = 0, magnitude: float = 0.3):
        self.model = model
        self.g = torch.Generator().manual_seed(seed)
        self.mag = magnitude
        self.sd: dict[str, torch.Tensor] = {}
        self.expected: dict[str, torch.Tensor] = {}

    def rnd(self, *shape):
        return torch.randn(*shape, generator=self.g) * self.mag

    def lora(self, name, rank=4, alpha=2.0, key=None, peft=False, mid=False):
        w = module(self.model, name).weight
        out_c, in_c = w.shape[0], w.shape[1]
        ks = tuple(w.shape[2:])
        key = key or kohya_name(name)
        if mid:
            down, mid_t, up = self.rnd(rank, in_c, 1, 1), self.rnd(rank, rank, *ks), self.rnd(out_c, rank, 1, 1)
            delta = torch.einsum("on,nmkl,mi->oikl", up.flatten(1), mid_t, down.flatten(1))
            self.sd[key + ".lora_mid.weight"] = mid_t
        else:
            down, up = self.rnd(rank, in_c, *ks), self.rnd(out_c, rank, *([1] * len(ks)))
            delta = (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
        if peft:
            self.sd[key + ".lora_A.weight"], self.sd[key + ".lora_B.weight"] = down, up
            scale = 1.0
        else:
            self.sd[key + ".lora_down.weight"], self.sd[key + ".lora_up.weight"] = down, up
            self.sd[key + ".alpha"] = torch.tensor(alpha)
            scale = alpha / rank
        self.expected[name] = delta * scale

    def loha(self, name, rank=4, alpha=2.0):
        w = module(self.model, name).weight
        key = kohya_name(name)
        fan_in = w[0].numel()  # conv: (rank, in·kh·kw), as LyCORIS stores it
        w1a, w1b, w2a, w2b = (self.rnd(w.shape[0], rank), self.rnd(rank, fan_in), self.rnd(w.shape[0], rank),
                              self.rnd(rank, fan_in))
        self.sd.update({key + ".hada_w1_a": w1a, key + ".hada_w1_b": w1b, key + ".hada_w2_a": w2a,
                        key + ".hada_w2_b": w2b, key + ".alpha": torch.tensor(alpha)})
        self.expected[name] = ((w1a @ w1b) * (w2a @ w2b)).reshape(w.shape) * (alpha / rank)

    def lokr(self, name, factor=4, rank=2, alpha=1.0, full_w2=False):
        w = module(self.model, name).weight
        key = kohya_name(name)
        o, i = w.shape[0], w.shape[1]
        w1 = self.rnd(factor, factor)
        self.sd[key + ".lokr_w1"] = w1
        if full_w2:
            w2 = self.rnd(o // factor, i // factor)
            self.sd[key + ".lokr_w2"] = w2
            scale = 1.0  # no low-rank factor → no rank to divide alpha by (A1111)
        else:
            a, b = self.rnd(o // factor, rank), self.rnd(rank, i // factor)
            self.sd[key + ".lokr_w2_a"], self.sd[key + ".lokr_w2_b"] = a, b
            w2, scale = a @ b, alpha / rank
        self.sd[key + ".alpha"] = torch.tensor(alpha)
        self.expected[name] = torch.kron(w1, w2).reshape(w.shape) * scale

    def save(self, path, dtype=None):
        path.parent.mkdir(parents=True, exist_ok=True)
        sd = {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in self.sd.items()}
        if path.suffix == ".safetensors":
            save_file(sd, str(path))
        else:
            torch.save(sd, path)
        return path


@pytest.fixture
def sd1(engine, data_dir):
    model = engine.models.get("sd1.safetensors")
    return engine, model, data_dir / "models" / "Lora"


def gen(engine, prompt="a cat", **kw):
    return engine.txt2img({**BASE, "prompt": prompt, "override_settings": {"sd_model_checkpoint": "sd1.safetensors"},
                           **kw})


def assert_patched(model, originals, expected, mult=1.0, atol=1e-6):
    for name, delta in expected.items():
        got = weight(model, name)
        assert torch.allclose(got, originals[name] + mult * delta, atol=atol, rtol=0), name
        assert not torch.equal(got, originals[name]), name


# ---------------------------------------------------------------------------------------------------------------
# Prompt tags


def test_parse_prompt_a1111_semantics():
    text, data = extra_networks.parse_prompt("a <lora:foo:0.5> cat, <lora:bar:0.3:0.7> <hypernet:x:1>")
    assert text == "a  cat,  "
    assert [p.items for p in data["lora"]] == [["foo", "0.5"], ["bar", "0.3", "0.7"]]
    assert "hypernet" in data
    w: list[str] = []
    assert extra_networks.lora_params(data["lora"][0], w) == ("foo", 0.5, 0.5, None)
    assert extra_networks.lora_params(data["lora"][1], w) == ("bar", 0.3, 0.7, None)
    _, d = extra_networks.parse_prompt("<lora:n:te=0.25:unet=2:dyn=4>")
    assert extra_networks.lora_params(d["lora"][0], w) == ("n", 0.25, 2.0, 4)
    _, d = extra_networks.parse_prompt("<lora:n>")
    assert extra_networks.lora_params(d["lora"][0], w) == ("n", 1.0, 1.0, None)
    _, d = extra_networks.parse_prompt("<lora:n:abc>")
    assert extra_networks.lora_params(d["lora"][0], w)[1] == 1.0 and w  # bad number → warning, default
    # The batch's networks are its first prompt's (A1111); every prompt loses its tags.
    prompts, data = extra_networks.parse_prompts(["x <lora:a:1>", "y <lora:b:1>"])
    assert prompts == ["x ", "y "] and [p.items[0] for p in data["lora"]] == ["a"]


def test_registry_recursive_and_refresh(tmp_path):
    from modules.paths import Paths

    class P:
        lora_dir = tmp_path / "Lora"
        lycoris_dir = tmp_path / "LyCORIS"

    (P.lora_dir / "sub").mkdir(parents=True)
    P.lycoris_dir.mkdir()
    save_file({"x.alpha": torch.tensor(1.0)}, str(P.lora_dir / "sub" / "deep.safetensors"))
    torch.save({"x.alpha": torch.tensor(1.0)}, P.lycoris_dir / "lyco.pt")
    (P.lora_dir / "notes.txt").write_text("not a network")
    reg = lora.LoraRegistry.from_paths(P)
    assert [e.rel for e in reg.refresh()] == ["lyco", "sub/deep"]
    assert reg.find("deep").path.name == "deep.safetensors" and reg.find("sub/deep") is reg.find("deep")
    assert reg.find("later") is None
    save_file({"x.alpha": torch.tensor(1.0)}, str(P.lora_dir / "later.ckpt.safetensors"))
    assert reg.find("later.ckpt") is not None  # found without restarting
    assert Paths  # noqa: the real Paths has lora_dir / lycoris_dir (checked by the engine tests below)


# ---------------------------------------------------------------------------------------------------------------
# kohya files: weights, output, removal


@pytest.mark.slow
@pytest.mark.parametrize("sgm", [False, True], ids=["diffusers-names", "sgm-names"])
def test_kohya_lora_patches_exactly_and_unloads_bit_exact(sd1, sgm):
    engine, model, lora_dir = sd1
    b = Builder(model)
    for name in (Q, K2, PROJ_IN, UP_V, CONV):
        b.lora("unet:" + name, key=kohya_name("unet:" + name, sgm=sgm))
    b.lora("te1:" + TE_Q)
    b.lora("te1:" + TE_FC, rank=8, alpha=8.0)
    path = b.save(lora_dir / "kohya.safetensors", dtype=torch.float16)  # fp16, as most files are
    rounded = {k: v.to(torch.float16).float() for k, v in b.sd.items()}
    originals = {n: weight(model, n) for n in b.expected}

    before = gen(engine)
    r = gen(engine, "a cat <lora:kohya:0.8>")
    expected = _expected_from_file(model, rounded, b.expected)
    assert_patched(model, originals, expected, mult=0.8)
    assert not np.array_equal(arr(r.images[0]), arr(before.images[0]))
    assert r.warnings == []
    params = infotext.parse_generation_parameters(r.info)
    assert params["Lora hashes"] == f"kohya: {addnet_hash_safetensors(path)[:12]}"
    assert 'Lora hashes: "kohya: ' in r.info and "<lora:kohya:0.8>" in r.info  # the prompt keeps its tag (A1111)

    after = gen(engine)
    for name, w in originals.items():
        assert torch.equal(weight(model, name), w), name
    assert np.array_equal(arr(after.images[0]), arr(before.images[0]))
    assert "Lora hashes" not in after.info
    assert lora.state_of(model).active == set()


def _expected_from_file(model, sd, names):
    """Recompute the expected ΔW from (rounded) file tensors with the plain formula."""
    out = {}
    for name in names:
        for sgm in (False, True):
            try:
                key = kohya_name(name, sgm)
            except KeyError:
                continue
            if key + ".lora_down.weight" in sd:
                down, up = sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"]
                w = module(model, name).weight
                scale = float(sd[key + ".alpha"]) / down.shape[0]
                out[name] = (up.flatten(1) @ down.flatten(1)).reshape(w.shape) * scale
    assert set(out) == set(names)
    return out


@pytest.mark.slow
def test_lycoris_and_peft_formats(sd1):
    engine, model, lora_dir = sd1
    before = gen(engine)
    builders = {}
    b = builders["peft"] = Builder(model, seed=1)
    b.lora("unet:" + Q, key="unet." + Q, peft=True)
    b.lora("unet:" + PROJ_IN, key="unet." + PROJ_IN, peft=True)
    b.lora("te1:" + TE_Q, key="text_encoder.text_model." + TE_Q, peft=True)
    b = builders["locon"] = Builder(model, seed=2)
    b.lora("unet:" + CONV, rank=4, alpha=1.0)
    b.lora("unet:down_blocks.0.resnets.0.conv2", rank=2, alpha=4.0, mid=True)
    b.lora("unet:" + Q)
    b = builders["loha"] = Builder(model, seed=3, magnitude=0.6)
    b.loha("unet:" + Q)
    b.loha("unet:" + UP_V, rank=2, alpha=1.0)
    b.loha("te1:" + TE_FC)
    b = builders["lokr"] = Builder(model, seed=4, magnitude=0.6)
    b.lokr("unet:" + Q)
    b.lokr("unet:" + K2, factor=8, rank=1, alpha=3.0)
    b.lokr("te1:" + TE_Q, factor=8, full_w2=True)
    for name, b in builders.items():
        b.save(lora_dir / ("lyco" if name != "peft" else "") / f"{name}.safetensors")
    originals = {n: weight(model, n) for b in builders.values() for n in b.expected}
    for name, b in builders.items():
        gen(engine)  # no tags: originals back in place
        r = gen(engine, f"a cat <lora:{name}:1.5>")
        assert r.warnings == [], name
        assert_patched(model, originals, b.expected, mult=1.5, atol=1e-5)
        assert not np.array_equal(arr(r.images[0]), arr(before.images[0])), name
    after = gen(engine)
    assert np.array_equal(arr(after.images[0]), arr(before.images[0]))


def test_pt_file_and_sha256_hash(sd1):
    engine, model, lora_dir = sd1
    b = Builder(model, seed=5)
    b.lora("unet:" + Q)
    path = b.save(lora_dir / "old.pt")
    original = weight(model, "unet:" + Q)
    r = gen(engine, "<lora:old:1> a cat")
    assert_patched(model, {"unet:" + Q: original}, b.expected)
    assert f"old: {sha256_file(path)[:12]}" in r.info


# ---------------------------------------------------------------------------------------------------------------
# Several at once, separate multipliers, warnings, no drift


@pytest.mark.slow
def test_two_loras_combine(sd1):
    engine, model, lora_dir = sd1
    a, b = Builder(model, seed=10), Builder(model, seed=11)
    a.lora("unet:" + Q)
    a.lora("te1:" + TE_Q)
    b.lora("unet:" + Q, rank=2, alpha=1.0)
    b.lora("unet:" + UP_V)
    a.save(lora_dir / "a.safetensors")
    b.save(lora_dir / "b.safetensors")
    names = ["unet:" + Q, "te1:" + TE_Q, "unet:" + UP_V]
    originals = {n: weight(model, n) for n in names}
    only_a = gen(engine, "a cat <lora:a:0.6>")
    r = gen(engine, "a cat <lora:a:0.6> <lora:b:-0.4>")
    q = originals["unet:" + Q] + 0.6 * a.expected["unet:" + Q] - 0.4 * b.expected["unet:" + Q]
    assert torch.allclose(weight(model, "unet:" + Q), q, atol=1e-6, rtol=0)
    assert torch.allclose(weight(model, "te1:" + TE_Q), originals["te1:" + TE_Q] + 0.6 * a.expected["te1:" + TE_Q],
                          atol=1e-6, rtol=0)
    assert torch.allclose(weight(model, "unet:" + UP_V),
                          originals["unet:" + UP_V] - 0.4 * b.expected["unet:" + UP_V], atol=1e-6, rtol=0)
    assert not np.array_equal(arr(r.images[0]), arr(only_a.images[0]))
    hashes = infotext.parse_generation_parameters(r.info)["Lora hashes"]
    assert re.fullmatch(r"a: [0-9a-f]{12}, b: [0-9a-f]{12}", hashes)
    # dropping one of the two leaves exactly the other
    gen(engine, "a cat <lora:b:-0.4>")
    assert torch.equal(weight(model, "te1:" + TE_Q), originals["te1:" + TE_Q])
    assert torch.allclose(weight(model, "unet:" + Q), originals["unet:" + Q] - 0.4 * b.expected["unet:" + Q],
                          atol=1e-6, rtol=0)


@pytest.mark.slow
def test_te_and_unet_multipliers_apply_separately(sd1):
    engine, model, lora_dir = sd1
    b = Builder(model, seed=20)
    b.lora("unet:" + Q)
    b.lora("te1:" + TE_Q)
    b.save(lora_dir / "split.safetensors")
    ou, ot = weight(model, "unet:" + Q), weight(model, "te1:" + TE_Q)
    gen(engine, "a cat <lora:split:0:1>")
    assert torch.equal(weight(model, "te1:" + TE_Q), ot)
    assert torch.allclose(weight(model, "unet:" + Q), ou + b.expected["unet:" + Q], atol=1e-6, rtol=0)
    gen(engine, "a cat <lora:split:te=0.5:unet=0>")
    assert torch.equal(weight(model, "unet:" + Q), ou)
    assert torch.allclose(weight(model, "te1:" + TE_Q), ot + 0.5 * b.expected["te1:" + TE_Q], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_unknown_lora_is_a_warning_and_still_an_image(sd1, caplog):
    engine, model, lora_dir = sd1
    before = gen(engine)
    with caplog.at_level("WARNING"):
        r = gen(engine, "a cat <lora:does_not_exist:1>")
    assert len(r.images) == 1
    assert any("does_not_exist" in w for w in r.warnings)
    assert "does_not_exist" in caplog.text
    # the tag is removed from the text, so the picture is the plain prompt's
    assert np.array_equal(arr(r.images[0]), arr(before.images[0]))
    # a file that matches nothing in the model is a warning too
    save_file({"lora_unet_nothing_here.lora_down.weight": torch.zeros(1, 4),
               "lora_unet_nothing_here.lora_up.weight": torch.zeros(4, 1)}, str(lora_dir / "other.safetensors"))
    r = gen(engine, "a cat <lora:other:1>")
    assert any("other" in w and "match" in w for w in r.warnings)
    assert "Lora hashes" not in r.info  # only applied networks are recorded
    assert r.js()["warnings"] == r.warnings  # the API's info carries the warning
    again = gen(engine, "a cat <lora:other:1>")  # the same set again (cached): still not recorded
    assert "Lora hashes" not in again.info and again.warnings


@pytest.mark.slow
def test_lora_added_after_start_is_found(sd1):
    engine, model, lora_dir = sd1
    gen(engine)
    b = Builder(model, seed=30)
    b.lora("unet:" + Q)
    b.save(lora_dir / "new" / "fresh.safetensors")
    r = gen(engine, "a cat <lora:fresh:1>")
    assert r.warnings == [] and "fresh: " in r.info


@pytest.mark.slow
def test_twenty_alternating_generations_leave_no_residue(sd1):
    engine, model, lora_dir = sd1
    a, b = Builder(model, seed=40), Builder(model, seed=41)
    for name in (Q, K2, UP_V, CONV):
        a.lora("unet:" + name)
        b.loha("unet:" + name)
    a.lora("te1:" + TE_Q)
    a.save(lora_dir / "alt_a.safetensors")
    b.save(lora_dir / "alt_b.safetensors")
    names = list(a.expected)
    originals = {n: weight(model, n) for n in names}
    # the whole model, to be sure nothing else moves either
    full = {k: v.clone() for k, v in model.unet.state_dict().items()}
    full_te = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    before = gen(engine)
    sets = ["", "<lora:alt_a:1>", "<lora:alt_b:0.7>", "<lora:alt_a:0.5><lora:alt_b:0.5>", "<lora:alt_a:0:1>"]
    for i in range(20):
        gen(engine, "a cat " + sets[i % len(sets)], steps=1)
    r = gen(engine, "a cat <lora:alt_a:1>")
    assert_patched(model, originals, {n: a.expected[n] for n in names}, mult=1.0)
    after = gen(engine)
    for k, v in model.unet.state_dict().items():
        assert torch.equal(v, full[k]), k
    for k, v in model.text_encoder.state_dict().items():
        assert torch.equal(v, full_te[k]), k
    assert np.array_equal(arr(after.images[0]), arr(before.images[0]))
    assert r.warnings == []


@pytest.mark.slow
def test_reloaded_model_starts_clean(sd1):
    engine, model, lora_dir = sd1
    b = Builder(model, seed=50)
    b.lora("unet:" + Q)
    b.save(lora_dir / "r.safetensors")
    original = weight(model, "unet:" + Q)
    gen(engine, "a cat <lora:r:1>")
    fresh = engine.models.reload()
    assert fresh is not model and torch.equal(weight(fresh, "unet:" + Q), original)
    gen(engine, "a cat <lora:r:1>")
    assert_patched(fresh, {"unet:" + Q: original}, b.expected)


# ---------------------------------------------------------------------------------------------------------------
# SDXL: lora_te1 / lora_te2 and sgm UNet names


@pytest.mark.slow
def test_sdxl_kohya_te1_te2_sgm(engine, data_dir):
    model = engine.models.get("sdxl.safetensors")
    xq = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    xk2 = "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"
    b = Builder(model, seed=60)
    b.lora("unet:" + xq, key="lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q")
    b.lora("unet:" + xk2, key="lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k")
    b.lora("te1:" + TE_Q, key=kohya_name("te1x:" + TE_Q))
    b.lora("te2:text_model.encoder.layers.1.self_attn.v_proj",
           key="lora_te2_text_model_encoder_layers_1_self_attn_v_proj")
    b.save(data_dir / "models" / "Lora" / "xl.safetensors")
    originals = {n: weight(model, n) for n in b.expected}
    req = {**BASE, "override_settings": {"sd_model_checkpoint": "sdxl.safetensors"}}
    before = engine.txt2img(req)
    r = engine.txt2img({**req, "prompt": "a cat <lora:xl:0.9>"})
    assert r.warnings == []
    assert_patched(model, originals, b.expected, mult=0.9)
    assert not np.array_equal(arr(r.images[0]), arr(before.images[0]))
    after = engine.txt2img(req)
    for n, w in originals.items():
        assert torch.equal(weight(model, n), w)
    assert np.array_equal(arr(after.images[0]), arr(before.images[0]))


# ---------------------------------------------------------------------------------------------------------------
# Unit level: formulas that are not exercised above


def test_dyn_dim_truncates_rank_and_tucker_loha():
    lin = torch.nn.Linear(6, 5)
    up, down = torch.randn(5, 4), torch.randn(4, 6)
    d = lora.delta_for({"up": up, "down": down, "alpha": torch.tensor(2.0)}, lin.weight.shape, dyn_dim=2)
    assert torch.allclose(d, (up[:, :2] @ down[:2]) * 0.5, atol=1e-6)
    conv = torch.nn.Conv2d(3, 4, 3)
    t1, t2 = torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3)
    w1a, w1b, w2a, w2b = torch.randn(2, 4), torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 3)
    d = lora.delta_for({"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b, "hada_t1": t1,
                        "hada_t2": t2}, conv.weight.shape)
    e1 = torch.einsum("ijkl,ia,jb->abkl", t1, w1a, w1b)
    e2 = torch.einsum("ijkl,ia,jb->abkl", t2, w2a, w2b)
    assert torch.allclose(d, e1 * e2, atol=1e-5)
