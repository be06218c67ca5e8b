"""The segmentation preprocessors (seg_ufade20k, seg_ofade20k, seg_ofcoco, seg_anime_face) from random-weight
networks of the real architectures, written in the released files' layouts (mmseg's checkpoint with `meta`,
detectron2's {"model": ...} with the training-only text encoder, the anime parser's plain state dict). The
full-size networks are checked on the meta device (names and shapes, nothing materialised); the pictures come from
small networks of the same architectures, whose sizes the loader reads from the file."""
from __future__ import annotations

import importlib
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch

from modules.controlnet import preprocessors as pp
from modules.controlnet import segmentation as seg


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    from modules.controlnet import annotators

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared machine: a second thread only waits
    annotators.import_controlnet_aux()  # every model-based run imports it first (seconds, once per process)
    importlib.import_module("transformers.models.oneformer.modeling_oneformer")  # likewise, once
    yield
    torch.set_num_threads(threads)
    annotators.unload_all()


def _picture(h=64, w=100) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:, : w // 2] = (200, 40, 30)
    img[:, w // 2:] = (30, 90, 220)
    return (img + rng.integers(0, 20, img.shape)).astype(np.uint8)


def _colours(out: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in c) for c in np.unique(out.reshape(-1, 3), axis=0)}


def _palette(p: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in c) for c in p}


def _random(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point() and not name.endswith(("running_var", "running_mean")):
                t.copy_(torch.randn_like(t) * 0.2)
    return net.eval()


def _one_class(weight: torch.Tensor, bias: torch.Tensor, winner: int) -> None:
    """A classifier that answers `winner` wherever it looks."""
    with torch.no_grad():
        weight.zero_()
        bias.fill_(-10.0)
        bias[winner] = 10.0


# --- UniFormer (seg_ufade20k) ---

def _uniformer_file(path, winner: int | None = None):
    net = _random(seg.UperNetUniFormer([16, 32, 64, 128], [1, 1, 1, 1], 4.0, 16, 150, (1, 2, 3, 6)))
    if winner is not None:
        _one_class(net.decode_head.conv_seg.weight, net.decode_head.conv_seg.bias, winner)
    sd = OrderedDict(net.state_dict())
    sd["auxiliary_head.convs.0.conv.weight"] = torch.randn(8, 64, 3, 3)  # the training-only FCN head
    sd["auxiliary_head.conv_seg.weight"] = torch.randn(150, 8, 1, 1)
    sd["auxiliary_head.conv_seg.bias"] = torch.randn(150)
    meta = {"CLASSES": tuple(f"class{i}" for i in range(150)), "PALETTE": seg.ADE20K_PALETTE.tolist(),
            "mmcv_version": "1.3.0", "config": "model = dict(...)"}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": meta, "state_dict": sd}, path)


def test_uniformer_full_size_matches_the_released_layout():
    with torch.device("meta"):
        net = seg.UperNetUniFormer([64, 128, 320, 512], [3, 4, 8, 3], 4.0, 512, 150, (1, 2, 3, 6))
    sd = net.state_dict()
    for key, shape in {"backbone.patch_embed1.proj.weight": (64, 3, 4, 4),
                       "backbone.blocks1.2.attn.weight": (64, 1, 5, 5),
                       "backbone.blocks2.3.norm1.running_var": (128,),
                       "backbone.blocks3.7.attn.qkv.weight": (960, 320),
                       "backbone.blocks4.2.mlp.fc2.weight": (512, 2048),
                       "backbone.norm4.weight": (512,),
                       "decode_head.psp_modules.3.1.conv.weight": (512, 512, 1, 1),
                       "decode_head.bottleneck.conv.weight": (512, 2560, 3, 3),
                       "decode_head.lateral_convs.2.bn.num_batches_tracked": (),
                       "decode_head.fpn_bottleneck.conv.weight": (512, 2048, 3, 3),
                       "decode_head.conv_seg.weight": (150, 512, 1, 1)}.items():
        assert tuple(sd[key].shape) == shape, key
    # UperNet with UniFormer-S: 52M parameters without the auxiliary head's 2.4M (the paper's 52M counts it in)
    assert 45e6 < sum(p.numel() for p in net.parameters()) < 56e6
    with torch.device("meta"):
        rebuilt = seg.uniformer_net(dict(sd))
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == {k: tuple(v.shape) for k, v in sd.items()}


def test_uniformer_map_is_ade20k_coloured_at_the_resized_size(tmp_path):
    _uniformer_file(tmp_path / seg.UNIFORMER_FILE)
    out = pp.get("seg_ufade20k").run(_picture(), resolution=64, annotator_dir=tmp_path, device="cpu")
    assert out.shape == (64, 100, 3) and out.dtype == np.uint8
    assert _colours(out) <= _palette(seg.ADE20K_PALETTE)


def test_uniformer_one_class_is_one_colour(tmp_path):
    _uniformer_file(tmp_path / seg.UNIFORMER_FILE, winner=2)  # sky
    out = pp.get("seg_ufade20k").run(_picture(80, 64), resolution=64, annotator_dir=tmp_path, device="cpu")
    assert out.shape == (80, 64, 3)
    assert _colours(out) == {(6, 230, 230)}


def test_uniformer_refuses_a_file_of_another_network_by_name(tmp_path):
    (tmp_path / "uniformer").mkdir()
    torch.save({"state_dict": {"de_block0.1.weight": torch.zeros(7, 32, 3, 3)}}, tmp_path / seg.UNIFORMER_FILE)
    with pytest.raises(RuntimeError, match="upernet_global_small.pth"):
        pp.get("seg_ufade20k").run(_picture(), resolution=64, annotator_dir=tmp_path, device="cpu")


# --- OneFormer (seg_ofade20k, seg_ofcoco) ---

_BACK = [  # transformers' OneFormerModel name -> the detectron2 checkpoint's (written independently of the loader)
    (r"pixel_level_module\.encoder\.swin\.embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
    (r"pixel_level_module\.encoder\.swin\.embeddings\.norm\.", "backbone.patch_embed.norm."),
    (r"pixel_level_module\.encoder\.hidden_states_norms\.stage(\d)\.", None),
    (r"pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.downsample\.", r"backbone.layers.\1.downsample."),
    (r"pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.",
     r"backbone.layers.\1.blocks.\2.norm1."),
    (r"pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.",
     r"backbone.layers.\1.blocks.\2.norm2."),
    (r"pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.o_proj\.",
     r"backbone.layers.\1.blocks.\2.attn.proj."),
    (r"pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.relative_position_bias\.",
     r"backbone.layers.\1.blocks.\2.attn."),
    (r"pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.",
     r"backbone.layers.\1.blocks.\2.mlp."),
    (r"pixel_level_module\.decoder\.(adapter_1|layer_1)\.0\.", r"sem_seg_head.pixel_decoder.\1."),
    (r"pixel_level_module\.decoder\.(adapter_1|layer_1)\.1\.", r"sem_seg_head.pixel_decoder.\1.norm."),
    (r"pixel_level_module\.decoder\.input_projections\.", "sem_seg_head.pixel_decoder.input_proj."),
    (r"pixel_level_module\.decoder\.level_embed", "sem_seg_head.pixel_decoder.transformer.level_embed"),
    (r"pixel_level_module\.decoder\.mask_projection\.", "sem_seg_head.pixel_decoder.mask_features."),
    (r"pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.fc1\.",
     r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.linear1."),
    (r"pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.fc2\.",
     r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.linear2."),
    (r"pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.",
     r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.norm1."),
    (r"pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.final_layer_norm\.",
     r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.norm2."),
    (r"pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn\.",
     r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.self_attn."),
    (r"transformer_module\.queries_embedder\.", "sem_seg_head.predictor.query_embed."),
    (r"transformer_module\.level_embed\.", "sem_seg_head.predictor.level_embed."),
    (r"transformer_module\.decoder\.decoder_norm\.", "sem_seg_head.predictor.decoder_norm."),
    (r"transformer_module\.decoder\.query_input_projection\.", "sem_seg_head.predictor.class_input_proj."),
    (r"transformer_module\.decoder\.class_embed\.", "sem_seg_head.predictor.class_embed."),
    (r"transformer_module\.decoder\.mask_embed\.layers\.(\d+)\.0\.", r"sem_seg_head.predictor.mask_embed.layers.\1."),
    (r"transformer_module\.decoder\.query_transformer\.decoder\.",
     "sem_seg_head.predictor.class_transformer.decoder."),
    (r"transformer_module\.decoder\.layers\.(\d+)\.cross_attn\.",
     r"sem_seg_head.predictor.transformer_cross_attention_layers.\1."),
    (r"transformer_module\.decoder\.layers\.(\d+)\.ffn\.", r"sem_seg_head.predictor.transformer_ffn_layers.\1."),
    (r"transformer_module\.decoder\.layers\.(\d+)\.self_attn\.norm\.",
     r"sem_seg_head.predictor.transformer_self_attention_layers.\1.norm."),
    (r"transformer_module\.decoder\.layers\.(\d+)\.self_attn\.self_attn\.out_proj\.",
     r"sem_seg_head.predictor.transformer_self_attention_layers.\1.self_attn.out_proj."),
    (r"task_encoder\.task_mlp\.layers\.(\d+)\.0\.", r"task_mlp.layers.\1."),
]
_QKV = [(r"(pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention)\.q_proj\.(weight|bias)",
         r"backbone.layers.\2.blocks.\3.attn.qkv.\4", r"\1.{}_proj.\4"),
        (r"(transformer_module\.decoder\.layers\.(\d+)\.self_attn\.self_attn)\.q_proj\.(weight|bias)",
         r"sem_seg_head.predictor.transformer_self_attention_layers.\2.self_attn.in_proj_\3", r"\1.{}_proj.\3")]


def _released_oneformer(hf: dict) -> dict:
    """A transformers OneFormerModel state dict written the way detectron2 saved OneFormer."""
    out = {}
    for key, value in hf.items():
        m = re.match(r"pixel_level_module\.encoder\.hidden_states_norms\.stage(\d)\.(.*)", key)
        if m:
            out[f"backbone.norm{int(m.group(1)) - 1}.{m.group(2)}"] = value
            continue
        for pattern, original, parts in _QKV:
            m = re.match(pattern, key)
            if m:
                out[m.expand(original)] = torch.cat([hf[m.expand(parts).format(n)] for n in "qkv"])
                break
        else:
            if re.search(r"\.(k|v)_proj\.", key) and ("attention." in key or "self_attn.self_attn" in key):
                continue
            for pattern, original in _BACK:
                m = re.match(pattern, key)
                if m and original:
                    out[m.expand(original) + key[m.end():]] = value
                    break
            else:
                raise AssertionError(f"no original name for {key}")
    for name in list(out):  # what the original also saved: Swin's index buffers
        if name.endswith("attn.relative_position_bias_table"):
            out[name.replace("bias_table", "index")] = torch.zeros(4, 4, dtype=torch.long)
    return out


def _oneformer_config(full: bool, classes: int):
    from transformers import OneFormerConfig, SwinConfig

    if full:  # the released Swin-L configs
        swin = SwinConfig(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
        return OneFormerConfig(backbone_config=swin, num_labels=classes, num_queries=250 if classes == 150 else 150)
    swin = SwinConfig(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    return OneFormerConfig(backbone_config=swin, num_labels=classes, num_queries=6, conv_dim=32, mask_dim=32,
                           hidden_dim=32, encoder_feedforward_dim=48, encoder_layers=1, decoder_layers=3,
                           dim_feedforward=48, query_dec_layers=1, num_attention_heads=4)


def _oneformer_file(path, classes: int, winner: int | None = None):
    import warnings

    from transformers.models.oneformer.modeling_oneformer import OneFormerModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = _random(OneFormerModel(_oneformer_config(False, classes)))
    decoder = net.transformer_module.decoder
    if winner is not None:
        _one_class(decoder.class_embed.weight, decoder.class_embed.bias, winner)
    sd = _released_oneformer({k: v for k, v in net.state_dict().items() if "swin.layernorm" not in k})
    sd["text_encoder.token_embedding.weight"] = torch.randn(16, 8)  # training-only parts the release also holds
    sd["text_projector.layers.0.weight"] = torch.randn(8, 8)
    sd["prompt_ctx.weight"] = torch.randn(16, 8)
    sd["criterion.empty_weight"] = torch.ones(classes + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd, "iteration": 159999, "__author__": "Jitesh Jain"}, path)


@pytest.mark.parametrize("classes", [150, 133])
def test_oneformer_full_size_names_and_shapes_on_meta(classes):
    import warnings

    from transformers.models.oneformer.modeling_oneformer import OneFormerModel

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = OneFormerModel(_oneformer_config(True, classes))
    released = _released_oneformer({k: v for k, v in reference.state_dict().items() if "swin.layernorm" not in k})
    for key, shape in {"backbone.patch_embed.proj.weight": (192, 3, 4, 4),
                       "backbone.layers.2.blocks.17.attn.qkv.weight": (2304, 768),
                       "backbone.layers.3.blocks.1.attn.relative_position_bias_table": (529, 48),
                       "backbone.layers.0.downsample.reduction.weight": (384, 768),
                       "backbone.norm3.weight": (1536,),
                       "sem_seg_head.pixel_decoder.input_proj.0.0.weight": (256, 1536, 1, 1),
                       "sem_seg_head.pixel_decoder.transformer.encoder.layers.5.self_attn.sampling_offsets.weight":
                           (192, 256),
                       "sem_seg_head.pixel_decoder.adapter_1.weight": (256, 192, 1, 1),
                       "sem_seg_head.predictor.transformer_self_attention_layers.8.self_attn.in_proj_weight":
                           (768, 256),
                       "sem_seg_head.predictor.query_embed.weight": (250 if classes == 150 else 150, 256),
                       "sem_seg_head.predictor.class_embed.weight": (classes + 1, 256),
                       "task_mlp.layers.0.weight": (256, 77)}.items():
        assert tuple(released[key].shape) == shape, key
    config = seg.oneformer_config({"model." + k: v for k, v in released.items()})
    assert (config.backbone_config.embed_dim, config.backbone_config.depths, config.backbone_config.num_heads,
            config.backbone_config.window_size) == (192, [2, 2, 18, 2], [6, 12, 24, 48], 12)
    assert (config.num_labels, config.decoder_layers, config.encoder_layers, config.num_attention_heads) == (
        classes, 10, 6, 8)
    with torch.device("meta"):
        net = seg.oneformer_net(released)
    renamed = seg.oneformer_keys(net, {"model." + k: v for k, v in released.items()})
    assert {k: tuple(v.shape) for k, v in renamed.items()} == {
        k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("label, relative, palette, winner, colour", [
    ("seg_ofade20k", seg.ONEFORMER_ADE20K_FILE, seg.ADE20K_PALETTE, 12, (150, 5, 61)),  # person
    ("seg_ofcoco", seg.ONEFORMER_COCO_FILE, seg.COCO_PANOPTIC_PALETTE, 0, (220, 20, 60))])  # person
@pytest.mark.slow  # a second or more of parity/size checks: out of the -m "not slow" loop
def test_oneformer_maps(tmp_path, label, relative, palette, winner, colour):
    _oneformer_file(tmp_path / relative, len(palette))
    out = pp.get(label).run(_picture(), resolution=64, annotator_dir=tmp_path, device="cpu")
    assert out.shape == (64, 100, 3) and out.dtype == np.uint8
    assert _colours(out) <= _palette(palette)
    from modules.controlnet import annotators

    annotators.unload_all()
    _oneformer_file(tmp_path / relative, len(palette), winner=winner)
    out = pp.get(label).run(_picture(80, 64), resolution=64, annotator_dir=tmp_path, device="cpu")
    assert out.shape == (80, 64, 3) and _colours(out) == {colour}


def test_oneformer_task_token_is_clips_bpe_of_the_semantic_task():
    tokens = seg.task_tokens()
    assert tokens.shape == (1, 77)
    assert tokens[0, :7].tolist() == [49406, 518, 10549, 533, 29119, 1550, 49407] and not tokens[0, 7:].any()


def test_oneformer_refuses_a_file_of_another_network_and_names_a_missing_one(tmp_path):
    _uniformer_file(tmp_path / seg.ONEFORMER_COCO_FILE)
    with pytest.raises(RuntimeError, match="150_16_swin_l_oneformer_coco_100ep.pth"):
        pp.get("seg_ofcoco").run(_picture(), resolution=64, annotator_dir=tmp_path, device="cpu")
    with pytest.raises(pp.MissingAnnotatorError) as e:
        pp.get("seg_ofade20k").run(_picture(), resolution=64, annotator_dir=tmp_path, device="cpu")
    assert "250_16_swin_l_oneformer_ade20k_160k.pth" in str(e.value) and str(tmp_path / "oneformer") in str(e.value)


# --- anime face segmentation (seg_anime_face) ---

@pytest.mark.slow  # a second or more of parity/size checks: out of the -m "not slow" loop
def test_anime_face_full_size_layout_and_map(tmp_path):
    net = _random(seg.AnimeFaceUNet())
    sd = net.state_dict()
    for key, shape in {"en_block0.0.0.weight": (32, 3, 3, 3), "en_block0.1.conv.1.weight": (16, 32, 1, 1),
                       "en_block4.2.conv.2.weight": (160, 960, 1, 1), "de_block4.1.weight": (96, 160, 3, 3),
                       "de_block1.1.weight": (16, 48, 3, 3), "de_block0.1.weight": (7, 32, 3, 3)}.items():
        assert tuple(sd[key].shape) == shape, key
    (tmp_path / "anime_face_segment").mkdir()
    torch.save(OrderedDict(("module." + k, v) for k, v in sd.items()), tmp_path / seg.ANIME_FACE_FILE)  # DataParallel
    out = pp.get("seg_anime_face").run(_picture(), resolution=64, annotator_dir=tmp_path, device="cpu")
    assert out.shape == (64, 100, 3) and out.dtype == np.uint8
    assert _colours(out) <= _palette(seg.ANIME_FACE_PALETTE)

    from modules.controlnet import annotators

    annotators.unload_all()
    _one_class(net.de_block0[1].weight, net.de_block0[1].bias, 1)  # hair
    torch.save(net.state_dict(), tmp_path / seg.ANIME_FACE_FILE)
    out = pp.get("seg_anime_face").run(_picture(80, 64), resolution=64, annotator_dir=tmp_path, device="cpu")
    assert out.shape == (80, 64, 3) and _colours(out) == {(0, 0, 255)}


def test_anime_face_refuses_another_network_and_names_a_missing_file(tmp_path):
    with pytest.raises(pp.MissingAnnotatorError) as e:
        pp.get("seg_anime_face").run(_picture(), resolution=64, annotator_dir=tmp_path, device="cpu")
    assert "UNet.pth" in str(e.value) and str(tmp_path / "anime_face_segment") in str(e.value)
    _uniformer_file(tmp_path / seg.ANIME_FACE_FILE)
    with pytest.raises(RuntimeError, match="UNet.pth"):
        pp.get("seg_anime_face").run(_picture(), resolution=64, annotator_dir=tmp_path, device="cpu")
