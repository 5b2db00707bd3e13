"""LCoInsPipeline: inputs of any size, outputs, captions, save/load round trip, model card."""

import logging

import numpy as np
import PIL.Image
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoTokenizer, BertConfig, BertModel

from mtcolor import LCoInsPipeline
from mtcolor.color import rgb_luminance
from mtcolor.hub import write_model_card
from mtcolor.models.lcoins import LCOINS_PRESETS, LCoInsModel, minilm_path

LOGGER = "mtcolor.pipelines.pipeline_lcoins"


def tiny_text_encoder(vocab_size: int, hidden: int = 32, max_positions: int = 24) -> BertModel:
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
    )
    return BertModel(config).eval()


@pytest.fixture(scope="module")
def pipe():
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())  # the real BERT uncased vocabulary, offline
    torch.manual_seed(0)
    text_encoder = tiny_text_encoder(len(tokenizer))
    model = LCoInsModel(**LCOINS_PRESETS["tiny"]).eval()
    with torch.no_grad():  # a visible chroma so recombination is exercised
        model.upsampler.to_ab.bias.copy_(torch.tensor([0.3, -0.2]))
    pipeline = LCoInsPipeline(model=model, text_encoder=text_encoder, tokenizer=tokenizer)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def gray_image(height, width, seed=0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray((rng.random((height, width)) * 255).astype(np.uint8), mode="L")


def test_any_size_input_keeps_its_size_and_its_luminance(pipe):
    gray = gray_image(45, 70)
    out = pipe(gray, "a red car", output_type="pt").images
    assert out.shape == (1, 3, 45, 70)
    lightness_in = rgb_luminance(torch.from_numpy(np.asarray(gray, np.float32) / 255)[None, None])[0]
    lightness_out = rgb_luminance(out)[0]
    assert (lightness_out - lightness_in).abs().mean() < 1.0  # the input's own L (up to gamut clipping)
    assert (out.max(1).values - out.min(1).values).mean() > 0.02  # not gray: ab was applied
    pil = pipe(gray, "a red car").images[0]
    assert isinstance(pil, PIL.Image.Image) and pil.size == (70, 45) and pil.mode == "RGB"


def test_batches_of_mixed_sizes_and_types(pipe):
    images = [
        gray_image(20, 30),
        np.random.default_rng(1).random((33, 17, 3)).astype(np.float32),
        torch.rand(1, 16, 16),
    ]
    out = pipe(images, ["a red car", "a green tree", "blue sky"], output_type="np").images
    assert [a.shape for a in out] == [(20, 30, 3), (33, 17, 3), (16, 16, 3)]
    same = pipe(torch.rand(2, 1, 24, 40), "a yellow cat", output_type="np").images
    assert isinstance(same, np.ndarray) and same.shape == (2, 24, 40, 3) and same.dtype == np.float32


def test_batch_equals_single_and_tuple_equals_dict(pipe):
    images = [gray_image(32, 32, seed=2), gray_image(40, 24, seed=3)]
    captions = ["a red apple", "a man in a green shirt and blue jeans"]
    batch = pipe(images, captions, output_type="pt").images
    for image, caption, result in zip(images, captions, batch):
        single = pipe(image, caption, output_type="pt").images[0]
        torch.testing.assert_close(result, single, atol=1e-5, rtol=1e-5)
    (as_tuple,) = pipe(images, captions, output_type="pt", return_dict=False)
    for a, b in zip(as_tuple, batch):
        torch.testing.assert_close(a, b)


def test_caption_reaches_the_model(pipe):
    """Plumbing on a random tiny model (no colour direction to expect): the caption changes the
    output. The direction ("blue" lowers b*) is asserted on the shipped model in
    tests/test_pipeline_directions.py."""
    gray = gray_image(32, 32)
    a = pipe(gray, "a red car", output_type="pt").images
    b = pipe(gray, "a blue car", output_type="pt").images
    assert not torch.allclose(a, b)


def test_bad_captions_are_handled_as_documented(pipe, caplog):
    gray = gray_image(32, 32)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        empty = pipe(gray, "", output_type="pt").images
    assert empty.shape == (1, 3, 32, 32) and "caption[0] is empty" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        pipe(gray, "a dog on a lawn", output_type="pt")
    assert "names no colour word" in caplog.text
    caplog.clear()
    limit = pipe.max_caption_length
    assert limit == 24  # min(tokenizer 512, text encoder positions 24)
    words = ["red"] + ["car"] * 40
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        long = pipe(gray, " ".join(words), output_type="pt").images
    assert f"takes {limit}" in caplog.text and "dropped" in caplog.text
    truncated = pipe(gray, " ".join(words[: limit - 2]), output_type="pt").images  # [CLS] ... [SEP]
    torch.testing.assert_close(long, truncated)


def test_invalid_arguments_name_the_argument(pipe):
    gray = gray_image(16, 16)
    with pytest.raises(TypeError, match="caption"):
        pipe(gray, 3)
    with pytest.raises(TypeError, match=r"caption\[1\]"):
        pipe([gray, gray], ["a red car", None])
    with pytest.raises(ValueError, match="2 entries for 3 images"):
        pipe([gray, gray, gray], ["a", "b"])
    with pytest.raises(ValueError, match="output_type"):
        pipe(gray, "a red car", output_type="latent")
    with pytest.raises(ValueError, match="max_caption_length"):
        pipe(gray, "a red car", max_caption_length=1000)
    with pytest.raises(ValueError, match=r"gray\[0\]"):
        pipe(np.full((8, 8), 3.0, np.float32), "a red car")
    with pytest.raises(ValueError, match="text_embed_dim"):
        LCoInsPipeline(
            model=pipe.model, text_encoder=tiny_text_encoder(100, hidden=16), tokenizer=pipe.tokenizer
        )


def test_save_pretrained_round_trip_with_tokenizer_and_model_card(pipe, tmp_path):
    pipe.save_pretrained(tmp_path, model_card_kwargs={"sections": {"Training": "none (random weights)"}})
    assert {p.name for p in tmp_path.iterdir()} >= {
        "model",
        "text_encoder",
        "tokenizer",
        "model_index.json",
        "README.md",
    }
    loaded = LCoInsPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.model) is LCoInsModel

    def public(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert public(loaded.model.config) == public(pipe.model.config)
    assert loaded.tokenizer("a teal cup")["input_ids"] == pipe.tokenizer("a teal cup")["input_ids"]
    gray = gray_image(30, 20)
    torch.testing.assert_close(
        loaded(gray, "a teal cup", output_type="pt").images, pipe(gray, "a teal cup", output_type="pt").images
    )
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "image-to-image"
    assert "l-coins" in card.data.tags and card.data.license == "apache-2.0"
    assert "## Training" in card.text and "LCoInsPipeline.from_pretrained" in card.text


def test_write_model_card_generic(tmp_path):
    path = write_model_card(
        tmp_path / "m",
        pipeline_class="MTColorPipeline",
        pipeline_tag="image-to-image",
        base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        tags=["colorization", "controlnet"],
        description="A test model.",
        usage="print('hi')",
        sections={"Evaluation": "PSNR 20 dB", "Limitations": "tests only"},
    )
    card = ModelCard.load(path)
    assert card.data.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert card.data.tags.count("colorization") == 1 and "controlnet" in card.data.tags
    assert card.text.index("## Evaluation") < card.text.index("## Limitations")
    with pytest.raises(ValueError, match="pipeline_tag"):
        write_model_card(
            tmp_path,
            pipeline_class="X",
            pipeline_tag="",
            base_model=None,
            tags=[],
            description="d",
            usage="u",
        )
    with pytest.raises(ValueError, match="tags"):
        write_model_card(
            tmp_path,
            pipeline_class="X",
            pipeline_tag="t",
            base_model=None,
            tags="a",
            description="d",
            usage="u",
        )


def test_generator_is_accepted_and_ignored(pipe):
    gray = gray_image(24, 24)
    plain = pipe(gray, "a red car", output_type="pt").images
    seeded = pipe(gray, "a red car", output_type="pt", generator=torch.Generator().manual_seed(3)).images
    assert torch.equal(plain, seeded)  # one deterministic forward pass: nothing to draw
