"""A1111 hypernetworks: files in A1111's exact `torch.save` format (written here by hand, key for key), the
k/v pre-hooks on the tiny SD1 UNet's attention against a hand-computed reference, `<hypernet:name:m>` through
txt2img (changes the image; multiplier 0 and a request without the tag give the never-hooked image), the setting
"Add hypernetwork to prompt", bad files and missing names as warnings, and `GET /sdapi/v1/hypernetworks`."""
from __future__ import annotations

import base64
import io
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modules.networks import extra_networks, hypernetworks as hn
from modules.processing import ProcessingContext, txt2img
from modules.request_types import Txt2ImgRequest

SEED, SIZE = 1234, 64


# ---------------------------------------------------------------------------------------------------------------
# Files as A1111's Hypernetwork.save writes them


def _linear(gen, n_in, n_out, scale=0.4):
    return torch.randn(n_out, n_in, generator=gen) * scale, torch.randn(n_out, generator=gen) * 0.1


def _layer_norm(gen, n):
    return 1 + 0.1 * torch.randn(n, generator=gen), 0.1 * torch.randn(n, generator=gen)


def mlp_state(dim: int, seed: int, layer_norm: bool) -> OrderedDict:
    """The state dict of A1111's HypernetworkModule for layer_structure [1, 2, 1], 'relu', activate_output False,
    no dropout: Sequential(Linear, ReLU, [LayerNorm], Linear, [LayerNorm]), so the Linear keys are linear.0 and
    linear.2 (linear.0, linear.3 and LayerNorms at linear.2, linear.4 with layer norm)."""
    gen = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    w0, b0 = _linear(gen, dim, 2 * dim)
    w1, b1 = _linear(gen, 2 * dim, dim)
    sd["linear.0.weight"], sd["linear.0.bias"] = w0, b0
    if layer_norm:
        sd["linear.2.weight"], sd["linear.2.bias"] = _layer_norm(gen, 2 * dim)
        sd["linear.3.weight"], sd["linear.3.bias"] = w1, b1
        sd["linear.4.weight"], sd["linear.4.bias"] = _layer_norm(gen, dim)
    else:
        sd["linear.2.weight"], sd["linear.2.bias"] = w1, b1
    return sd


def reference_mlp(sd: dict, x: torch.Tensor, layer_norm: bool) -> torch.Tensor:
    """linear(x) of that module, computed by hand."""
    h = F.relu(x @ sd["linear.0.weight"].T + sd["linear.0.bias"])
    if layer_norm:
        h = F.layer_norm(h, h.shape[-1:], sd["linear.2.weight"], sd["linear.2.bias"])
        h = h @ sd["linear.3.weight"].T + sd["linear.3.bias"]
        return F.layer_norm(h, h.shape[-1:], sd["linear.4.weight"], sd["linear.4.bias"])
    return h @ sd["linear.2.weight"].T + sd["linear.2.bias"]


def a1111_file(dims=(64,), seed: int = 0, layer_norm: bool = False, **meta) -> dict:
    data = {}
    for i, dim in enumerate(dims):
        data[dim] = (mlp_state(dim, seed * 100 + 2 * i, layer_norm), mlp_state(dim, seed * 100 + 2 * i + 1,
                                                                               layer_norm))
    data.update({"step": 1000, "name": "ignored-by-lookup", "layer_structure": [1, 2, 1], "activation_func": "relu",
                 "is_layer_norm": layer_norm, "weight_initialization": "Normal", "sd_checkpoint": "0123456789",
                 "sd_checkpoint_name": "tiny", "activate_output": False, "use_dropout": False,
                 "dropout_structure": [0, 0, 0], "last_layer_dropout": False, "optional_info": None})
    data.update(meta)
    return data


def save(folder, name, data):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pt"
    torch.save(data, str(path))
    return path


@pytest.fixture
def hyper_dir(tmp_path):
    folder = tmp_path / "hypernetworks"
    save(folder, "Style", a1111_file(seed=1))
    save(folder / "sub", "normed", a1111_file(seed=2, layer_norm=True))
    return folder


@pytest.fixture
def model(load_tiny):
    m = load_tiny("sd1.safetensors")
    hn.remove(m)
    yield m
    hn.remove(m)


def generate(model, registry, prompt, options=None, **kw):
    ctx = ProcessingContext(model=model, options={"return_grid": False, **(options or {})}, outputs=None,
                            hypernetworks=registry)
    req = Txt2ImgRequest(prompt=prompt, negative_prompt="blurry", steps=2, cfg_scale=5.0, width=SIZE, height=SIZE,
                         seed=SEED, sampler_name="Euler", **kw)
    return txt2img(ctx, req)


@pytest.fixture(scope="module")
def never(load_tiny):
    """The image of "a red ball" before any hypernetwork was ever hooked into the model."""
    m = load_tiny("sd1.safetensors")
    assert hn.active(m) == [] and not any(a.to_k._forward_pre_hooks for _, a in hn.attention_layers(m.unet))
    return pixels(generate(m, None, "a red ball"))


def activate(model, registry, prompts, options=None):
    ctx = ProcessingContext(model=model, options=options or {}, outputs=None, hypernetworks=registry)
    return extra_networks.activate(ctx, model, prompts)


def pixels(result):
    return np.asarray(result.images[0], np.int16)


# ---------------------------------------------------------------------------------------------------------------
# Reading files


def test_a1111_structure_and_keys(hyper_dir):
    net = hn.load_file(hyper_dir / "sub" / "normed.pt")
    assert net.name == "normed" and set(net.layers) == {64} and net.step == 1000
    k = net.layers[64][0]
    assert [type(m).__name__ for m in k.linear] == ["Linear", "ReLU", "LayerNorm", "Linear", "LayerNorm"]
    # Old files: no dropout_structure, use_dropout + last_layer_dropout → A1111's parse_dropout_structure; the
    # Dropout modules take their indices (so the Linear keys are linear.0, .3, .6), activate_output defaults True.
    s = hn.Structure.from_file({"layer_structure": [1, 2, 2, 1], "activation_func": "swish", "use_dropout": True,
                                "last_layer_dropout": True}, "x.pt")
    mod = hn.HypernetworkModule(8, s)
    assert [type(m).__name__ for m in mod.linear] == ["Linear", "Hardswish", "Dropout", "Linear", "Hardswish",
                                                      "Dropout", "Linear", "Hardswish"]
    assert [k for k in mod.state_dict() if k.endswith("weight")] == ["linear.0.weight", "linear.3.weight",
                                                                     "linear.6.weight"]
    assert hn.ACTIVATIONS["gelu"] is torch.nn.GELU and hn.ACTIVATIONS["linear"] is torch.nn.Identity
    # NovelAI-era names linear1/linear2 (A1111's fix_old_state_dict), no metadata at all: [1, 2, 1], no activation
    gen = torch.Generator().manual_seed(3)
    old = {"linear1.weight": torch.randn(16, 8, generator=gen), "linear1.bias": torch.zeros(16),
           "linear2.weight": torch.randn(8, 16, generator=gen), "linear2.bias": torch.zeros(8)}
    path = save(hyper_dir, "old", {8: [old, dict(old)]})
    x = torch.randn(2, 3, 8)
    got = hn.load_file(path).layers[8][1](x, 0.5)
    want = x + ((x @ old["linear1.weight"].T) @ old["linear2.weight"].T) * 0.5
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("data, why", [
    ("not a dict", "not an A1111 hypernetwork"),
    ({"layer_structure": [1, 2, 1]}, "no layers"),
    (dict(a1111_file(), activation_func="wobbly"), "unsupported activation function 'wobbly'"),
    (dict(a1111_file(), layer_structure=[2, 1]), "must start and end with 1"),
    (dict(a1111_file(), is_layer_norm=True), "do not fit"),  # the weights have no LayerNorm entries
    (dict(a1111_file(), layer_structure=[1, 4, 1]), "linear.0.weight is (128, 64)"),
    ({64: (mlp_state(64, 0, False),)}, "not a (k, v) pair"),
])
def test_bad_files_are_named(tmp_path, data, why):
    path = save(tmp_path, "broken", data)
    with pytest.raises(hn.HypernetworkError, match="broken.pt") as err:
        hn.load_file(path)
    assert why in str(err.value)


def test_a_pickle_that_runs_code_is_refused(tmp_path, capfd):
    from modules.models.loader import UnsafeCheckpointError

    class Evil:
        def __reduce__(self):
            return print, ("pwned-by-hypernet",)

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({64: (Evil(), {}), "layer_structure": [1, 2, 1]}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt: refused to load") as err:
        hn.load_file(path)
    assert "print" in str(err.value)  # what it wanted to call
    assert "pwned-by-hypernet" not in capfd.readouterr().out


def test_registry_names_case_and_refresh(hyper_dir):
    reg = hn.HypernetworkRegistry([hyper_dir])
    assert [e.name for e in reg.refresh()] == ["Style", "normed"]  # A1111: sorted by path, lower-case
    assert reg.find("style").path == hyper_dir / "Style.pt" and reg.find("STYLE") is reg.find("Style")
    assert reg.find("sub/normed").name == "normed" and reg.find("nope") is None
    save(hyper_dir, "None", a1111_file())  # A1111 never lists a "None.pt"
    save(hyper_dir, "later", a1111_file())
    assert reg.find("later") is not None  # a miss lists the folder again
    assert reg.names() == {"later": str(hyper_dir / "later.pt"), "normed": str(hyper_dir / "sub" / "normed.pt"),
                           "Style": str(hyper_dir / "Style.pt")}
    assert reg.load(reg.find("later")) is reg.load(reg.find("later"))  # loaded once


# ---------------------------------------------------------------------------------------------------------------
# The hooks


def _attention(attn, h, ck, cv):
    """diffusers' Attention by hand, with separate k and v inputs (F.linear: the hooks stay out of it)."""
    q = F.linear(h, attn.to_q.weight, attn.to_q.bias)
    k = F.linear(ck, attn.to_k.weight, attn.to_k.bias)
    v = F.linear(cv, attn.to_v.weight, attn.to_v.bias)
    b, n, _ = q.shape
    split = lambda t: t.view(b, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    out = out.transpose(1, 2).reshape(b, n, -1)
    return attn.to_out[1](attn.to_out[0](out))


@pytest.mark.parametrize("layer_norm", [False, True])
def test_hooked_cross_attention_equals_the_reference(model, tmp_path, layer_norm):
    a, b = a1111_file(seed=5, layer_norm=layer_norm), a1111_file(seed=6, layer_norm=layer_norm)
    reg = hn.HypernetworkRegistry([tmp_path])
    save(tmp_path, "a", a), save(tmp_path, "b", b)
    reg.refresh()
    name, attn2 = next((n, m) for n, m in hn.attention_layers(model.unet) if n.endswith("attn2"))
    assert attn2.to_k.in_features == 64
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 16, attn2.to_q.in_features, generator=gen)
    ctx = torch.randn(2, 77, 64, generator=gen)
    with torch.no_grad():
        plain = attn2(h, encoder_hidden_states=ctx)
        warnings = hn.apply(model, reg, [hn.ActiveHypernetwork(reg.find("a"), 0.7),
                                         hn.ActiveHypernetwork(reg.find("b"), 1.3)])
        hooked = attn2(h, encoder_hidden_states=ctx)
        k_in = ctx + reference_mlp(a[64][0], ctx, layer_norm) * 0.7  # prompt order: a, then b
        k_in = k_in + reference_mlp(b[64][0], k_in, layer_norm) * 1.3
        v_in = ctx + reference_mlp(a[64][1], ctx, layer_norm) * 0.7
        v_in = v_in + reference_mlp(b[64][1], v_in, layer_norm) * 1.3
        torch.testing.assert_close(attn2.to_k(ctx), F.linear(k_in, attn2.to_k.weight, attn2.to_k.bias))
        reference = _attention(attn2, h, k_in, v_in)
        assert warnings == [] and [n.name for n in hn.active(model)] == ["a", "b"]
        torch.testing.assert_close(hooked, reference, atol=1e-5, rtol=1e-5)
        assert (hooked - plain).abs().max() > 1e-3
        hn.apply(model, reg, [])
        torch.testing.assert_close(attn2(h, encoder_hidden_states=ctx), plain, atol=0, rtol=0)
    assert hn.active(model) == [] and not any(attn2.to_k._forward_pre_hooks for _, attn2 in
                                              hn.attention_layers(model.unet))


# ---------------------------------------------------------------------------------------------------------------
# Through txt2img


def test_tag_in_txt2img(model, hyper_dir, never):
    reg = hn.HypernetworkRegistry([hyper_dir])
    reg.refresh()
    res = generate(model, reg, "a red ball <hypernet:style:0.7>")
    assert res.warnings == []
    assert np.abs(pixels(res) - never).max() > 3  # the hypernetwork acts
    assert "a red ball <hypernet:style:0.7>" in res.infotexts[0] and "Hypernet" not in res.infotexts[0].split("\n")[-1]
    # multiplier 0: equal to no tag, so the tag never reached the text encoder either
    assert np.array_equal(pixels(generate(model, reg, "a red ball <hypernet:Style:0>")), never)
    # a request without the tag after one with it runs the plain UNet again
    generate(model, reg, "a red ball <hypernet:normed:0.7>")
    assert np.array_equal(pixels(generate(model, reg, "a red ball")), never)
    act = activate(model, reg, ["a <hypernet:style:0.5> b <hypernet:normed>"])
    assert act.prompts == ["a  b "]
    assert [(w.entry.name, w.multiplier) for w in act.hypernetworks] == [("Style", 0.5), ("normed", 1.0)]
    assert [n.name for n in hn.active(model)] == ["Style", "normed"]


def test_setting_adds_the_tag(model, hyper_dir):
    reg = hn.HypernetworkRegistry([hyper_dir])
    reg.refresh()
    tagged = generate(model, reg, "a red ball <hypernet:Style:1.0>")
    res = generate(model, reg, "a red ball", {"sd_hypernetwork": "Style"})
    assert np.array_equal(pixels(res), pixels(tagged))
    assert res.all_prompts == ["a red ball<hypernet:Style:1.0>"]  # A1111 appends it to p.all_prompts
    assert res.infotexts[0].startswith("a red ball<hypernet:Style:1.0>\n")
    prompts = ["x <hypernet:normed:0.5>", "y"]  # added after the prompt's own, with the default multiplier
    act = activate(model, reg, prompts, {"sd_hypernetwork": "style", "extra_networks_default_multiplier": 0.6})
    assert prompts == ["x <hypernet:normed:0.5><hypernet:style:0.6>", "y<hypernet:style:0.6>"]
    assert [(w.entry.name, w.multiplier) for w in act.hypernetworks] == [("normed", 0.5), ("Style", 0.6)]
    prompts = ["x <hypernet:Style:0.5>"]  # named already: not added twice
    act = activate(model, reg, prompts, {"sd_hypernetwork": "Style"})
    assert prompts == ["x <hypernet:Style:0.5>"] and [w.multiplier for w in act.hypernetworks] == [0.5]
    for options in ({"sd_hypernetwork": "None"}, {"sd_hypernetwork": "Style", "disable_extra_networks": True}):
        prompts = ["x"]
        assert activate(model, reg, prompts, options).hypernetworks == [] and prompts == ["x"]
    assert hn.active(model) == []
    act = activate(model, reg, ["x"], {"sd_hypernetwork": "gone"})
    assert act.warnings == ["Hypernetwork not found: 'gone' (setting \"Add hypernetwork to prompt\")"]


def test_missing_and_bad_files_warn_and_the_image_is_made(model, hyper_dir, never):
    reg = hn.HypernetworkRegistry([hyper_dir])
    save(hyper_dir, "mismatch", dict(a1111_file(), layer_structure=[1, 3, 1]))
    (hyper_dir / "evil.pt").write_bytes(pickle.dumps({64: (_Evil(), {})}, protocol=2))
    save(hyper_dir, "sdxl-only", a1111_file(dims=(2048,)))
    reg.refresh()
    res = generate(model, reg, "a red ball <hypernet:nope:1> <hypernet:mismatch:1> <hypernet:evil> "
                               "<hypernet:sdxl-only:x>")
    assert "Hypernetwork sdxl-only: 'x' is not a number; using 1.0" in res.warnings
    assert "Hypernetwork not found: 'nope'" in res.warnings
    assert any("mismatch.pt" in w and "linear.0.weight" in w for w in res.warnings), res.warnings
    assert any("evil.pt: refused to load" in w for w in res.warnings), res.warnings
    assert any("sdxl-only: none of its widths (2048)" in w for w in res.warnings), res.warnings
    assert not any("not supported" in w for w in res.warnings)
    assert np.array_equal(pixels(res), never)
    assert activate(model, None, ["x <hypernet:Style>"]).warnings == ["Hypernetwork not found: 'Style'"]


class _Evil:
    def __reduce__(self):
        return print, ("pwned",)


# ---------------------------------------------------------------------------------------------------------------
# API


def test_api_lists_and_applies(data_dir):
    from fastapi.testclient import TestClient

    from modules import cmd_args, server

    folder = data_dir / "models" / "hypernetworks"
    save(folder, "zeta", a1111_file(seed=3))
    save(folder / "sub", "Alpha", a1111_file(seed=4))
    ns = cmd_args.parse_args(["--data-dir", str(data_dir), "--nowebui"], env={})
    app = server.create_app(server.build_context(ns))
    with TestClient(app) as client:
        assert client.get("/sdapi/v1/hypernetworks").json() == [
            {"name": "Alpha", "path": str(folder / "sub" / "Alpha.pt")},
            {"name": "zeta", "path": str(folder / "zeta.pt")}]
        body = {"prompt": "a cat", "steps": 2, "width": SIZE, "height": SIZE, "seed": 7, "sampler_name": "Euler",
                "override_settings": {"sd_model_checkpoint": "sd1.safetensors"}}
        images = []
        for prompt in ("a cat <hypernet:zeta:1>", "a cat"):
            r = client.post("/sdapi/v1/txt2img", json={**body, "prompt": prompt})
            assert r.status_code == 200, r.text
            images.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))), np.int16))
        assert np.abs(images[1] - images[0]).max() > 3  # the engine hands its registry to the generation


def test_hypernetworks_act_in_the_controlnets_attention_too(model, hyper_dir, monkeypatch):
    """As in A1111 (its hijack reaches every CrossAttention, the ControlNet's too), and only while the job runs."""
    from PIL import Image

    from modules.controlnet.units import ControlUnit
    from tests import tiny_controlnets as tc

    reg = hn.HypernetworkRegistry([hyper_dir])
    reg.refresh()
    net = tc.build_controlnet(model.unet, 1)
    edges = np.zeros((SIZE, SIZE, 3), np.uint8)
    edges[8:56:4, :] = 255
    unit = ControlUnit(model=net, image=Image.fromarray(edges))

    def run():
        ctx = ProcessingContext(model=model, options={"return_grid": False}, outputs=None, hypernetworks=reg,
                                control_units=[unit])
        req = Txt2ImgRequest(prompt="a red ball <hypernet:style:0.8>", negative_prompt="blurry", steps=2,
                             cfg_scale=5.0, width=SIZE, height=SIZE, seed=SEED, sampler_name="Euler")
        return pixels(txt2img(ctx, req))

    everywhere = run()
    assert not any(a.to_k._forward_pre_hooks for _, a in hn.attention_layers(net))  # taken off after the job
    monkeypatch.setattr(hn, "hook_into", lambda networks, m: [])
    unet_only = run()
    assert np.abs(everywhere - unet_only).max() > 0
