"""The CLIP tokenizer is built offline from open-clip-torch's BPE file and must tokenize exactly like CLIP."""
import pytest

from modules.models.tokenizer import build_clip_tokenizer

PROMPTS = [
    "a photo of a cat",
    "masterpiece, best quality, (1girl:1.2), <lora:foo:0.8>, [red|blue] hair",
    "Ünïcödé and émoji 🐱🔥 in a prompt",
    "line one\nline two\ttabbed   spaces",
    "photograph of an astronaut riding a horse, 8k, highly detailed, trending on artstation",
]


def test_known_ids():
    tok = build_clip_tokenizer()
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408


def test_padding_tokens_per_family():
    sd1 = build_clip_tokenizer()  # CLIP-L pads with <|endoftext|>
    open_clip = build_clip_tokenizer("!")  # OpenCLIP (SD2, SDXL bigG) pads with "!" = id 0
    ids1 = sd1("cat", padding="max_length", max_length=77).input_ids
    ids2 = open_clip("cat", padding="max_length", max_length=77).input_ids
    assert len(ids1) == len(ids2) == 77
    assert ids1[-1] == 49407 and ids2[-1] == 0 and ids1[:3] == ids2[:3]


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_matches_open_clip_reference_tokenizer(prompt):
    from open_clip.tokenizer import SimpleTokenizer

    ref = SimpleTokenizer()
    expected = [ref.encoder["<start_of_text>"]] + ref.encode(prompt) + [ref.encoder["<end_of_text>"]]
    assert build_clip_tokenizer()(prompt).input_ids == expected


def test_t5_tokenizer_loads_from_the_repo_without_the_network(monkeypatch):
    """Flux and SD3 prompts go through T5 v1.1's vocabulary, which the repo carries (modules/models/tokenizers/t5)."""
    import socket

    from modules.models.tokenizer import build_t5_tokenizer

    def no_network(*args, **kwargs):
        raise AssertionError("the T5 tokenizer tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    tok = build_t5_tokenizer(max_length=16)
    assert tok("a photo of a cat").input_ids == [3, 9, 1202, 13, 3, 9, 1712, 1]  # the ids the released models see
    padded = tok("a photo of a cat", padding="max_length", max_length=16, truncation=True).input_ids
    assert len(padded) == 16 and padded[7:] == [1] + [0] * 8  # end of text, then T5's pad id 0
    assert len(tok(" ".join(["cat"] * 40), truncation=True).input_ids) == 16
