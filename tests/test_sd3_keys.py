"""SD3/SD3.5 weights in Stability's layout (the released files) convert to diffusers' model and back, at any size."""
from __future__ import annotations

import pytest
import torch

from modules.models.sd3_keys import diffusers_to_sai, sai_to_diffusers
from tests.test_detect_flow import RELEASES

TINY = {"sample_size": 8, "patch_size": 2, "in_channels": 4, "num_layers": 3, "attention_head_dim": 8,
        "num_attention_heads": 2, "joint_attention_dim": 12, "caption_projection_dim": 16, "pooled_projection_dim": 6,
        "out_channels": 4, "pos_embed_max_size": 8, "dual_attention_layers": (0,), "qk_norm": "rms_norm"}


def shapes(sd) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("variant", ["SD3 Medium", "SD3.5 Medium", "SD3.5 Large"])
def test_full_size_layout_matches_what_diffusers_reads(variant):
    """At the released sizes our Stability layout is what diffusers' own converter turns back into its model's exact
    keys and shapes (meta device, no weights), and ours reads it back the same."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    with torch.device("meta"):
        model = SD3Transformer2DModel(**RELEASES[variant][1])
    ours = dict(model.state_dict())
    sai = diffusers_to_sai(ours)
    assert shapes(convert_sd3_transformer_checkpoint_to_diffusers(dict(sai))) == shapes(ours)
    assert shapes(sai_to_diffusers(sai)) == shapes(ours)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_tiny_model_round_trip_is_exact_and_computes_the_same(prefix):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    model = SD3Transformer2DModel(**TINY).eval()
    original = model.state_dict()
    sai = diffusers_to_sai(original, prefix)
    assert f"{prefix}joint_blocks.0.x_block.attn2.qkv.weight" in sai  # the dual-attention block
    back = sai_to_diffusers(sai, prefix)
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)
    last = f"{prefix}joint_blocks.2.context_block.adaLN_modulation.1.weight"
    assert torch.equal(sai[last], torch.cat(original["transformer_blocks.2.norm1_context.linear.weight"].chunk(2)[::-1]))

    rebuilt = SD3Transformer2DModel(**TINY).eval()
    rebuilt.load_state_dict(back, strict=True)
    inputs = dict(hidden_states=torch.randn(1, 4, 8, 8), encoder_hidden_states=torch.randn(1, 5, 12),
                  pooled_projections=torch.randn(1, 6), timestep=torch.tensor([500.0]))
    with torch.no_grad():
        assert torch.equal(model(**inputs).sample, rebuilt(**inputs).sample)


def test_unknown_tensors_are_named():
    from diffusers import SD3Transformer2DModel

    sai = diffusers_to_sai(SD3Transformer2DModel(**TINY).state_dict())
    sai["joint_blocks.1.x_block.surprise.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="joint_blocks.1.x_block.surprise.weight"):
        sai_to_diffusers(sai)


def test_tiny_values_equal_what_diffusers_converter_gives():
    """Diffusers' SD3 converter reads sizes from the file too: on a tiny model both give the same tensors, swapped
    modulation halves included."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    torch.manual_seed(1)
    sai = diffusers_to_sai(SD3Transformer2DModel(**TINY).state_dict())
    reference, ours = convert_sd3_transformer_checkpoint_to_diffusers(dict(sai)), sai_to_diffusers(sai)
    assert reference.keys() == ours.keys() and all(torch.equal(reference[k], ours[k]) for k in reference)
