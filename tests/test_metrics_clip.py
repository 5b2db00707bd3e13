"""CLIP-score and instance CLIP-score with a tiny randomly initialised open_clip model, offline."""

import json

import pytest
import torch

from mtcolor.metrics import ClipScorer, MetricWeightsError, clip_score, instance_clip_score
from mtcolor.metrics.clip import instance_crops

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """An open_clip model folder (the hub layout) holding a tiny random CLIP; the real BPE tokenizer."""
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny_clip")
    config = {"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    save_file(open_clip.CLIP(**TINY_CLIP).state_dict(), str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def scorer(clip_folder):
    return ClipScorer.from_pretrained(clip_folder)


def _scene():
    images = torch.rand(2, 3, 40, 60, generator=torch.Generator().manual_seed(0))
    label_maps = torch.zeros(2, 40, 60, dtype=torch.long)
    label_maps[:, 5:20, 10:30] = 1
    label_maps[0, 25:35, 40:55] = 2
    label_maps[0, 30:35, 40:45] = 0  # instance 2 of image 0 is L-shaped: its box has non-instance pixels
    return images, label_maps


def test_loading_from_a_folder_or_a_file(clip_folder, scorer, tmp_path):
    import open_clip

    assert scorer.image_size == 32
    assert torch.allclose(scorer.mean.flatten(), torch.tensor(CLIP_MEAN))
    # a weights file takes its architecture from model_name (registered here as a custom config)
    (tmp_path / "mtcolor-tiny-test.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "mtcolor-tiny-test.json")
    from_file = ClipScorer.from_pretrained(
        clip_folder / "open_clip_model.safetensors", model_name="mtcolor-tiny-test"
    )
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(from_file.score(images, ["a", "b"]), scorer.score(images, ["a", "b"]), atol=1e-6)
    with pytest.raises(MetricWeightsError, match="--clip-weights"):
        ClipScorer.from_pretrained(None)
    with pytest.raises(MetricWeightsError, match="do not exist"):
        ClipScorer.from_pretrained(clip_folder / "missing.bin")
    with pytest.raises(ValueError, match="pass model_name"):
        ClipScorer.from_pretrained(clip_folder / "open_clip_model.safetensors")


def test_clip_score_is_the_cosine_of_the_embeddings(scorer):
    images, _ = _scene()
    texts = ["a red car", "a blue sky"]
    scores = clip_score(images, texts, scorer)
    # CLIP preprocessing: short side 40 -> 32 (so 60 -> 48), centre crop of the 48 columns
    resized = torch.nn.functional.interpolate(images, size=(32, 48), mode="bicubic", antialias=True)
    squares = resized[..., 8:40]
    image_embeddings = scorer.model.encode_image((squares.clamp(0, 1) - scorer.mean) / scorer.std)
    text_embeddings = scorer.model.encode_text(scorer.tokenizer(texts))
    expected = torch.nn.functional.cosine_similarity(image_embeddings, text_embeddings)
    assert torch.allclose(scores, expected, atol=1e-5)
    assert ((scores >= -1) & (scores <= 1)).all()


def test_instance_crops_mask_out_other_pixels():
    image = torch.zeros(3, 20, 20)
    image[0] = 1.0  # everything red
    label_map = torch.zeros(20, 20, dtype=torch.long)
    label_map[2:8, 4:16] = 1  # 6 x 12 box -> padded to 12 x 12
    label_map[2:4, 4:8] = 0  # a notch: box pixels outside the instance
    fill = torch.tensor([0.5, 0.5, 0.5])
    crop = instance_crops(image, label_map, [1], size=12, fill=fill)[0]  # no resize at 12
    red = torch.tensor([1.0, 0, 0]).view(3, 1, 1)
    # the box sits in rows 3..8 of the 12 x 12 square; its rows 2.. are all instance
    assert torch.allclose(crop[:, 5:9], red.expand(3, 4, 12))
    assert torch.allclose(crop[:, 3:5, 4:], red.expand(3, 2, 8))
    assert torch.allclose(crop[:, 3:5, 0:4], fill.view(3, 1, 1).expand(3, 2, 4))  # the notch
    assert torch.allclose(crop[:, :3], fill.view(3, 1, 1).expand(3, 3, 12))  # square padding
    assert torch.allclose(crop[:, 9:], fill.view(3, 1, 1).expand(3, 3, 12))
    kept = instance_crops(image, label_map, [1], size=12, fill=None)[0]
    assert torch.allclose(kept[:, 3:5, 0:4], torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 2, 4))


def test_instance_clip_score_depends_only_on_the_instance(scorer):
    images, label_maps = _scene()
    texts = [["a red car", "a green tree"], ["a dog", ""]]
    result = instance_clip_score(images, label_maps, texts, scorer)
    assert result.image_index.tolist() == [0, 0, 1] and result.instance.tolist() == [1, 2, 1]
    assert result.skipped == [(1, 2, "empty text")]
    assert result.mean == pytest.approx(result.scores.mean().item())
    assert torch.isnan(result.per_image(3)[2]) and result.per_image(3)[1] == pytest.approx(
        result.scores[2].item()
    )
    # the same instance pixels on a different background score the same (other pixels are masked out)
    repainted = torch.where(label_maps[:, None] > 0, images, torch.rand_like(images))
    assert torch.allclose(
        instance_clip_score(repainted, label_maps, texts, scorer).scores, result.scores, atol=1e-5
    )
    # a direct transcription for one instance
    crop = instance_crops(images[0], label_maps[0], [2], 32, scorer.mean.view(3))
    assert result.scores[1].item() == pytest.approx(scorer.score(crop, ["a green tree"]).item(), abs=1e-6)
    with pytest.raises(ValueError, match="has only 1 entries"):
        instance_clip_score(images, label_maps, [["a red car"], ["a dog"]], scorer)
