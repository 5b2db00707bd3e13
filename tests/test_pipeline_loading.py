"""Both pipelines' ``from_pretrained``: text encoders referenced from a package, missing and broken
component folders; ``MTColorPipeline`` with a BERT-family text encoder."""

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

import mtcolor.text_encoders as text_encoders
from mtcolor import LCoInsPipeline, MTColorPipeline
from mtcolor.color import image_luminance, rgb_to_lab
from mtcolor.models.lcoins import LCOINS_PRESETS, LCoInsModel, minilm_path
from mtcolor.testing import randomize_adapter, tiny_components
from mtcolor.text_encoders import REFERENCE_FILE, write_text_encoder_reference

PACKAGE = ("tiny_bert_pkg", "model", "lcoins", "tiny-bert-pkg")  # import name, subfolder, extra, pip name


def tiny_bert(vocab_size: int, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,  # = the tiny UNet's cross_attention_dim and the adapter's text_embed_dim
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=24,
    )
    return BertModel(config).eval()


@pytest.fixture(scope="module")
def bert_tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())  # the real BERT uncased vocabulary, offline


@pytest.fixture(scope="module")
def clip_components(tmp_path_factory):
    components = tiny_components(0, tokenizer_cache=str(tmp_path_factory.mktemp("tok")))
    randomize_adapter(components["adapter"], seed=1, gate=0.5, scale=0.05)
    return components


def _scene(h=40, w=56):
    gray = np.random.RandomState(0).rand(h, w).astype(np.float32)
    car = np.zeros((h, w), bool)
    car[: h // 2, : w // 2] = True
    cat = np.zeros((h, w), bool)
    cat[h // 2 + 2 :, w // 2 + 2 :] = True
    return gray, [car, cat], ["a red car", "a blue cat"]


def build(kind: str, components: dict, text_encoder=None, tokenizer=None):
    """A tiny pipeline of ``kind`` ("mtcolor" or "lcoins"), with another text encoder if given."""
    if kind == "mtcolor":
        parts = dict(components)
        if text_encoder is not None:
            parts.update(text_encoder=text_encoder, tokenizer=tokenizer)
        pipe = MTColorPipeline(**parts)
    else:
        torch.manual_seed(0)
        model = LCoInsModel(**LCOINS_PRESETS["tiny"]).eval()
        pipe = LCoInsPipeline(model=model, text_encoder=text_encoder, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def colorize(pipe, **kw):
    gray, masks, texts = _scene()
    if isinstance(pipe, LCoInsPipeline):
        return pipe(gray, "a red car next to a blue cat", output_type="pt").images
    kw = {"num_inference_steps": 2, "working_resolution": 64, "alpha": 0.5, "output_type": "pt", **kw}
    return pipe(
        gray, masks, texts, prompt="a street", generator=torch.Generator().manual_seed(0), **kw
    ).images


@pytest.fixture
def packaged_bert(tmp_path, monkeypatch, bert_tokenizer):
    """A fake installed package holding a tiny BERT, registered as the packaged encoder "tiny-bert"."""
    encoder = tiny_bert(len(bert_tokenizer), seed=7)
    folder = tmp_path / "site-packages" / PACKAGE[0] / PACKAGE[1]
    encoder.save_pretrained(folder)
    monkeypatch.setitem(text_encoders.PACKAGED_TEXT_ENCODERS, "tiny-bert", PACKAGE)
    real = text_encoders.packaged_text_encoder_dir
    monkeypatch.setattr(
        text_encoders, "packaged_text_encoder_dir", lambda name: folder if name == "tiny-bert" else real(name)
    )
    return encoder


# ---------------------------------------------------------------------------------------------------
# a BERT-family text encoder in MTColorPipeline


def test_mtcolor_runs_with_a_bert_text_encoder(clip_components, bert_tokenizer):
    pipe = build("mtcolor", clip_components, tiny_bert(len(bert_tokenizer)), bert_tokenizer)
    gray, masks, texts = _scene()
    out = colorize(pipe)
    assert out.shape == (1, 3, 40, 56) and torch.isfinite(out).all()
    assert torch.equal(out, colorize(pipe))
    assert (rgb_to_lab(out)[:, 0] - image_luminance(gray)).abs().max() < 0.05
    hidden, pooled = pipe.encode_instance_texts([texts], "cpu")
    assert hidden[0].shape == (2, 24, 32) and pooled[0].shape == (2, 32)  # padded to BERT's 24 positions
    # a sentence encoder's pooled text is the mean of its real tokens' hidden states (not [CLS])
    tokens = len(bert_tokenizer("a red car")["input_ids"])
    assert torch.allclose(pooled[0][0], hidden[0][0, :tokens].mean(0), atol=1e-5)


@pytest.mark.parametrize("encoder_kind", ["bert", "packaged"])
def test_from_components_loads_any_text_encoder(
    encoder_kind, clip_components, bert_tokenizer, packaged_bert, tmp_path
):
    """``from_components`` on a base-model folder whose text encoder is a BERT (its weights, or a
    packaged reference) gets that encoder, not a CLIP, and colorizes as the assembled pipeline does."""
    pipe = build("mtcolor", clip_components, packaged_bert, bert_tokenizer)
    reference = colorize(pipe)
    pipe.save_pretrained(tmp_path / "base")
    if encoder_kind == "packaged":
        write_text_encoder_reference(tmp_path / "base", "tiny-bert")
    loaded = MTColorPipeline.from_components(
        str(tmp_path / "base"),
        adapter=str(tmp_path / "base" / "adapter"),
        controlnet=str(tmp_path / "base" / "controlnet"),
        scheduler=pipe.scheduler,
    )
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.text_encoder, BertModel)
    assert type(loaded.tokenizer).__name__.startswith("Bert")
    assert torch.equal(colorize(loaded), reference)


# ---------------------------------------------------------------------------------------------------
# text encoders referenced from an installed package


@pytest.mark.parametrize("kind", ["mtcolor", "lcoins"])
def test_packaged_text_encoder_resolves_and_saves_full_weights(
    kind, clip_components, bert_tokenizer, packaged_bert, tmp_path, monkeypatch
):
    pipe = build(kind, clip_components, packaged_bert, bert_tokenizer)
    reference = colorize(pipe)
    pipe.save_pretrained(tmp_path / "ref")
    write_text_encoder_reference(tmp_path / "ref", "tiny-bert")
    assert [p.name for p in (tmp_path / "ref" / "text_encoder").iterdir()] == [REFERENCE_FILE]

    loaded = type(pipe).from_pretrained(tmp_path / "ref")
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(colorize(loaded), reference)

    loaded.save_pretrained(tmp_path / "full")  # a self-contained copy: the weights, no reference
    saved = {p.name for p in (tmp_path / "full" / "text_encoder").iterdir()}
    assert "model.safetensors" in saved and REFERENCE_FILE not in saved
    monkeypatch.undo()  # the package is gone: the full copy still loads
    again = type(pipe).from_pretrained(tmp_path / "full")
    again.set_progress_bar_config(disable=True)
    assert torch.equal(colorize(again), reference)


def test_missing_package_names_the_extra(clip_components, bert_tokenizer, tmp_path, monkeypatch):
    pipe = build("lcoins", clip_components, tiny_bert(len(bert_tokenizer)), bert_tokenizer)
    monkeypatch.setitem(
        text_encoders.PACKAGED_TEXT_ENCODERS,
        "tiny-bert",
        ("mtcolor_no_such_package", "model", "lcoins", "nope"),
    )
    pipe.save_pretrained(tmp_path)
    write_text_encoder_reference(tmp_path, "tiny-bert")
    with pytest.raises(ImportError, match=r'pip install "mtcolor\[lcoins\]"'):
        LCoInsPipeline.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------
# missing and broken component folders


@pytest.fixture(scope="module")
def saved(clip_components, bert_tokenizer, tmp_path_factory):
    """One saved folder per pipeline kind (copied before each test damages it)."""
    folders = {}
    for kind in ("mtcolor", "lcoins"):
        text = {} if kind == "mtcolor" else {"text_encoder": tiny_bert(len(bert_tokenizer))}
        pipe = build(kind, clip_components, tokenizer=bert_tokenizer, **text)
        folders[kind] = tmp_path_factory.mktemp(kind)
        pipe.save_pretrained(folders[kind])
    return folders


def _copy(saved, kind, tmp_path):
    target = tmp_path / kind
    shutil.copytree(saved[kind], target)
    return target


@pytest.mark.parametrize("kind", ["mtcolor", "lcoins"])
def test_missing_tokenizer_folder_is_an_error(kind, saved, tmp_path):
    folder = _copy(saved, kind, tmp_path)
    shutil.rmtree(folder / "tokenizer")  # loaded before with a default tokenizer, silently
    cls = MTColorPipeline if kind == "mtcolor" else LCoInsPipeline
    with pytest.raises(FileNotFoundError) as info:
        cls.from_pretrained(folder)
    message = str(info.value)
    assert str(folder) in message and "tokenizer/ (" in message and "which is missing or empty" in message


@pytest.mark.parametrize("kind", ["mtcolor", "lcoins"])
def test_garbled_safetensors_header_names_the_component(kind, saved, tmp_path):
    folder = _copy(saved, kind, tmp_path)
    weights = folder / "text_encoder" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"x" * 32  # the JSON header
    weights.write_bytes(bytes(data))
    cls = MTColorPipeline if kind == "mtcolor" else LCoInsPipeline
    with pytest.raises(Exception) as info:
        cls.from_pretrained(folder)
    message = str(info.value)
    assert "could not load its 'text_encoder' component" in message
    assert str(folder / "text_encoder") in message and "header" in message  # the original cause stays


@pytest.mark.parametrize(
    "kind, component, key, value",
    [("mtcolor", "adapter", "encoder_hidden_dim", 48), ("lcoins", "model", "vit_intermediate_size", 48)],
)
def test_config_that_does_not_match_the_weights_names_the_component(
    kind, component, key, value, saved, tmp_path
):
    folder = _copy(saved, kind, tmp_path)
    config_file = folder / component / "config.json"
    config = json.loads(config_file.read_text())
    config[key] = value
    config_file.write_text(json.dumps(config))
    cls = MTColorPipeline if kind == "mtcolor" else LCoInsPipeline
    with pytest.raises(ValueError) as info:  # was "Cannot load  because ..." with no component
        cls.from_pretrained(folder)
    message = str(info.value)
    assert f"could not load its {component!r} component" in message and str(folder / component) in message
    assert "expected shape" in message


def _missing_shard(folder, component):
    """Re-save ``component`` in 20 kB shards and delete the second shard."""
    from diffusers import UNet2DConditionModel

    sub = folder / component
    UNet2DConditionModel.from_pretrained(sub).save_pretrained(sub, max_shard_size="20KB")
    (sub / "diffusion_pytorch_model.safetensors").unlink()
    (shard,) = sub.glob("diffusion_pytorch_model-00002-of-*.safetensors")
    shard.unlink()


def _symlink_loop(folder, component):
    (weights,) = (folder / component).glob("*.safetensors")
    weights.unlink()
    weights.symlink_to(weights.name)  # points at itself: every open fails with ELOOP


@pytest.mark.parametrize(
    "kind, component, damage",
    [
        ("mtcolor", "unet", _missing_shard),
        ("mtcolor", "unet", _symlink_loop),
        ("mtcolor", "text_encoder", _symlink_loop),
        ("lcoins", "model", _symlink_loop),
    ],
)
def test_load_errors_name_the_class_model_index_lists(kind, component, damage, saved, tmp_path):
    """The class in the message is the one model_index.json lists for the component, not a name read
    from another library's frames (diffusers reuses its loop variable: it said 'ORTModule')."""
    folder = _copy(saved, kind, tmp_path)
    listed = json.loads((folder / "model_index.json").read_text())[component][1]
    damage(folder, component)
    cls = MTColorPipeline if kind == "mtcolor" else LCoInsPipeline
    with pytest.raises(Exception) as info:
        cls.from_pretrained(folder)
    message = str(info.value)
    assert f"could not load its {component!r} component ({listed}) from {folder / component}" in message
    assert f"pass {component}=<a loaded {listed}>" in message
    assert "ORTModule" not in message
