"""Language probe: does a text encoder's pooled embedding tell which colour an unseen word names?

    python -m mtcolor.bench language_probe [--text_encoder all-MiniLM-L6-v2|PATH] [--threads 1]

A nearest-centroid colour classifier is fitted on the pooled embeddings (``pool_text_embeddings``,
the MT eq. 3 rule) of the training phrasings (``mtcolor.phrasing.TRAIN_WORDS`` x
``TRAIN_TEMPLATES`` x the synthetic shapes) and scored on phrasings the training never used: unseen
templates with training words, unseen colour words (``HELDOUT_WORDS``, the language split) with
training templates, and both unseen. A second fit uses a large vocabulary instead: the ~900 XKCD
colour names (minus anything containing a held-out word), each labelled with the basic colour
nearest to its XKCD colour in CIELAB. The probe bounds what a model conditioned on this encoder
can learn from these training texts: the embedding must place "navy" nearer blue than the other
colours for any downstream layer to generalise there.
"""

from __future__ import annotations

import argparse
import json

import torch


def nearest_centroid_accuracy(
    train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor
) -> float:
    """Share of ``test`` rows (N, D) whose nearest class centroid (cosine) is their label.

    Centroids are the means of the L2-normalised ``train`` rows (M, D) of each label in
    ``train_labels`` (M,) (labels 0..K-1, every label present).
    """
    train = torch.nn.functional.normalize(train.float(), dim=-1)
    test = torch.nn.functional.normalize(test.float(), dim=-1)
    labels = int(train_labels.max()) + 1
    centroids = torch.stack([train[train_labels == k].mean(0) for k in range(labels)])
    centroids = torch.nn.functional.normalize(centroids, dim=-1)
    predicted = (test @ centroids.T).argmax(-1)
    return float((predicted == test_labels).float().mean())


def encode(texts: list[str], tokenizer, text_encoder, batch: int = 64) -> torch.Tensor:
    """Pooled embeddings (N, D) of ``texts`` as the model receives them (MT eq. 3 input:
    :func:`mtcolor.conditioning.encode_texts`), ``batch`` texts at a time."""
    from mtcolor.conditioning import encode_texts

    with torch.no_grad():
        return torch.cat(
            [
                encode_texts(tokenizer, text_encoder, texts[i : i + batch])[1]
                for i in range(0, len(texts), batch)
            ]
        )


def xkcd_vocabulary(colors: list[str], exclude: set[str]) -> tuple[list[str], torch.Tensor]:
    """XKCD colour names without any word of ``exclude``, labelled (index into ``colors``) with the
    basic colour whose XKCD colour is nearest in CIELAB."""
    from matplotlib._color_data import XKCD_COLORS

    from mtcolor.color import rgb_to_lab

    def lab(names: list[str]) -> torch.Tensor:
        rgb = [[int(XKCD_COLORS["xkcd:" + n][i : i + 2], 16) / 255 for i in (1, 3, 5)] for n in names]
        return rgb_to_lab(torch.tensor(rgb).T[:, None, :])[:, 0].T  # (N, 3)

    names = [n[5:] for n in XKCD_COLORS if "/" not in n]
    names = [n for n in names if not any(word in n for word in exclude)]
    prototypes = lab([c.replace("gray", "grey") for c in colors])
    labels = torch.cdist(lab(names), prototypes).argmin(-1)
    return names, labels


def run_probe(tokenizer, text_encoder, shapes: list[str]) -> dict[str, float]:
    """The probe's accuracies (see the module docstring), keyed by test set."""
    from mtcolor.phrasing import HELDOUT_TEMPLATES, HELDOUT_WORDS, TRAIN_TEMPLATES, TRAIN_WORDS, fill

    colors = list(TRAIN_WORDS)

    def phrases(words: dict, templates) -> tuple[list[str], torch.Tensor]:
        items = [
            (fill(t, w, s), colors.index(c))
            for c, ws in words.items()
            for w in ws
            for t in templates
            for s in shapes
        ]
        return [text for text, _ in items], torch.tensor([label for _, label in items])

    train_texts, train_labels = phrases(TRAIN_WORDS, TRAIN_TEMPLATES)
    train = encode(train_texts, tokenizer, text_encoder)
    result = {"training phrasings (fit)": nearest_centroid_accuracy(train, train_labels, train, train_labels)}
    tests = {
        "unseen templates": phrases(TRAIN_WORDS, HELDOUT_TEMPLATES),
        "unseen colour words": phrases(HELDOUT_WORDS, TRAIN_TEMPLATES),
        "unseen words and templates": phrases(HELDOUT_WORDS, HELDOUT_TEMPLATES),
    }
    embedded = {
        name: (encode(texts, tokenizer, text_encoder), labels) for name, (texts, labels) in tests.items()
    }
    for name, (test, labels) in embedded.items():
        result[name] = nearest_centroid_accuracy(train, train_labels, test, labels)
    held = {w for ws in HELDOUT_WORDS.values() for w in ws}
    names, labels = xkcd_vocabulary(colors, held)
    vocabulary = encode([fill(TRAIN_TEMPLATES[0], n, shapes[0]) for n in names], tokenizer, text_encoder)
    test, test_labels = embedded["unseen colour words"]
    result[f"unseen colour words, fit on {len(names)} XKCD names"] = nearest_centroid_accuracy(
        vocabulary, labels, test, test_labels
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtcolor.bench language_probe", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--text_encoder", default="all-MiniLM-L6-v2", help="a packaged encoder name or a folder"
    )
    parser.add_argument(
        "--max_length", type=int, default=40, help="tokens per text (the embedded models' tokenizer: 40)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the accuracies to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mtcolor.synthetic import SyntheticConfig
    from mtcolor.text_encoders import (
        PACKAGED_TEXT_ENCODERS,
        load_packaged_text_encoder,
        load_packaged_tokenizer,
    )

    if args.text_encoder in PACKAGED_TEXT_ENCODERS:
        tokenizer = load_packaged_tokenizer(args.text_encoder, model_max_length=args.max_length)
        text_encoder = load_packaged_text_encoder(args.text_encoder)
    else:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.text_encoder)
        text_encoder = AutoModel.from_pretrained(args.text_encoder)
    result = run_probe(tokenizer, text_encoder.eval(), list(SyntheticConfig().shapes))
    print(f"Nearest-centroid colour probe on {args.text_encoder}'s pooled embeddings\n")
    print("| test phrasings | accuracy |\n|---|---|")
    for name, accuracy in result.items():
        print(f"| {name} | {accuracy:.1%} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
