"""Flux weights in Black Forest Labs' layout (the released files) convert to diffusers' model and back, at any size."""
from __future__ import annotations

import pytest
import torch

from modules.models.flux_keys import bfl_to_diffusers, diffusers_to_bfl

TINY = {"in_channels": 16, "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 8,
        "num_attention_heads": 2, "joint_attention_dim": 24, "pooled_projection_dim": 12, "axes_dims_rope": (2, 2, 4)}


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_full_size_layout_matches_what_diffusers_reads(guidance):
    """At the released size our BFL layout is what diffusers' own converter (full-size only) turns back into its
    model's exact keys and shapes: checked on the meta device, no weights."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    with torch.device("meta"):
        model = FluxTransformer2DModel(guidance_embeds=guidance)
    ours = dict(model.state_dict())
    bfl = diffusers_to_bfl(ours)
    assert "double_blocks.18.img_attn.qkv.weight" in bfl and "single_blocks.37.linear1.weight" in bfl
    assert ("guidance_in.in_layer.weight" in bfl) == guidance
    back = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    assert {k: tuple(v.shape) for k, v in bfl_to_diffusers(bfl).items()} == {k: tuple(v.shape) for k, v in ours.items()}


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_tiny_model_round_trip_is_exact_and_computes_the_same(prefix):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(guidance_embeds=True, **TINY).eval()
    original = model.state_dict()
    bfl = diffusers_to_bfl(original, prefix)
    assert all(k.startswith(prefix) for k in bfl) and len(bfl) < len(original)  # q, k, v (and MLP) fused
    back = bfl_to_diffusers(bfl, prefix)
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)

    rebuilt = FluxTransformer2DModel(guidance_embeds=True, **TINY).eval()
    rebuilt.load_state_dict(back, strict=True)
    inputs = dict(hidden_states=torch.randn(1, 4, 16), encoder_hidden_states=torch.randn(1, 3, 24),
                  pooled_projections=torch.randn(1, 12), timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
                  img_ids=torch.zeros(4, 3), txt_ids=torch.zeros(3, 3))
    with torch.no_grad():
        assert torch.equal(model(**inputs).sample, rebuilt(**inputs).sample)


def test_fp8_and_fp16_tensors_keep_their_dtype():
    from diffusers import FluxTransformer2DModel

    sd = {k: v.to(torch.float8_e4m3fn) for k, v in FluxTransformer2DModel(**TINY).state_dict().items()}
    assert {v.dtype for v in bfl_to_diffusers(diffusers_to_bfl(sd)).values()} == {torch.float8_e4m3fn}


def test_unknown_tensors_are_named():
    from diffusers import FluxTransformer2DModel

    bfl = diffusers_to_bfl(FluxTransformer2DModel(**TINY).state_dict())
    bfl["double_blocks.0.surprise.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="double_blocks.0.surprise.weight"):
        bfl_to_diffusers(bfl)
