"""Text and instance conditioning shared by the MT-Color pipeline and the training scripts."""

from __future__ import annotations

import torch

from mtcolor.text_encoders import is_clip_text_encoder, pool_text_embeddings, tokenize_texts
from mtcolor.threads import torch_threads


@torch.no_grad()
def encode_texts(
    tokenizer, text_encoder, texts: list[str], device=None, names: list[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode texts with any transformers text encoder (CLIP, BERT-family, ...).

    Texts are padded / truncated to :func:`mtcolor.text_encoders.text_max_length` tokens; a text
    cut there is named in a warning (``names``, e.g. ``["prompt[0]"]``; default ``text[i]``).

    Returns:
        hidden states (N, L, D) (the UNet's ``encoder_hidden_states``) and pooled embeddings (N, D)
        (the instance encoder's text input, MT eq. 3; the rule is
        :func:`mtcolor.text_encoders.pool_text_embeddings`).
    """
    device = device or text_encoder.device
    ids, mask = tokenize_texts(tokenizer, text_encoder, list(texts), names)
    ids, mask = ids.to(device), mask.to(device)
    if is_clip_text_encoder(text_encoder):
        out = text_encoder(input_ids=ids, return_dict=True)  # as SD's pipelines call CLIP: no padding mask
    else:
        out = text_encoder(input_ids=ids, attention_mask=mask, return_dict=True)
    return out.last_hidden_state, pool_text_embeddings(text_encoder, out, mask)


def encode_instance_texts(
    tokenizer, text_encoder, texts: list[list[str]], device=None, dtype=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled embeddings of every instance text of a batch, padded to the longest list.

    Args:
        texts: per sample, its instance texts (possibly empty).

    Returns:
        embeddings (B, n_max, D) (zeros for padding) and counts (B,) int64.
    """
    device = device or text_encoder.device
    counts = torch.tensor([len(t) for t in texts], dtype=torch.long, device=device)
    n_max = int(counts.max()) if len(texts) else 0
    width = text_encoder.config.hidden_size
    dtype = dtype or text_encoder.dtype
    embeds = torch.zeros(len(texts), n_max, width, device=device, dtype=dtype)
    flat = [t for sample in texts for t in sample]
    if flat:
        names = [f"texts[{b}][{i}]" for b, sample in enumerate(texts) for i in range(len(sample))]
        _, pooled = encode_texts(tokenizer, text_encoder, flat, device, names)
        start = 0
        for b, sample in enumerate(texts):
            embeds[b, : len(sample)] = pooled[start : start + len(sample)].to(dtype)
            start += len(sample)
    return embeds, counts


def _recall(memo, texts: list[str], encode_missing, max_entries: int) -> list:
    """Rows of ``texts`` from an ``OrderedDict`` memo, encoding the missing ones (first-seen order)
    with ``encode_missing(texts) -> rows`` and dropping the least recently used entries beyond
    ``max_entries``."""
    missing = list(dict.fromkeys(t for t in texts if t not in memo))
    if missing:
        memo.update(zip(missing, encode_missing(missing)))
    rows = []
    for text in texts:
        memo.move_to_end(text)
        rows.append(memo[text])
    while len(memo) > max_entries:
        memo.popitem(last=False)
    return rows


def _equal_length_batches(lengths: list[int], device) -> list[list[int]]:
    """Indices of texts with token counts ``lengths`` in batches of equal length.

    A batch of equal-length sequences needs no padding, and on the CPU with one thread a row of a
    matrix product does not depend on the other rows, so each row is bit-identical to encoding its
    text alone (checked in ``tests/test_text_encoders.py``; with two threads rows differ by about
    1e-7, hence one thread). The memoised encoders batch their misses this way (about 4x
    faster than one text at a time) and stay independent of which texts missed together, so a
    resumed run (empty memo) gets the same bits. On other devices (GPU kernels are chosen by batch
    size) every text is its own batch.
    """
    size = 64 if torch.device(device).type == "cpu" else 1
    groups: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        groups.setdefault(length, []).append(i)
    return [group[k : k + size] for group in groups.values() for k in range(0, len(group), size)]


class CachedTextEncoder:
    """A frozen text encoder with a per-text memo: each distinct text is encoded once.

    Deterministic: every text is padded to the same fixed length and the misses are encoded in
    batches without other padding (:func:`_equal_length_batches`), so a row never depends on which
    other texts missed the memo with it, and a resumed run (empty memo) gets bit-identical
    embeddings. Training loops see the same prompts and instance texts every
    epoch; with a frozen encoder (all of mtcolor's trainers freeze it) this removes the encoder
    from the step time.

    Args:
        max_entries: texts kept (least recently used dropped first); each costs L x D floats.
    """

    def __init__(self, tokenizer, text_encoder, max_entries: int = 50_000):
        from collections import OrderedDict

        self.tokenizer, self.text_encoder, self.max_entries = tokenizer, text_encoder, max_entries
        self._memo: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    @torch.no_grad()
    def __call__(self, texts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :func:`encode_texts`: hidden states (N, L, D) and pooled embeddings (N, D)."""

        def encode_missing(missing: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
            # every text is padded to the same fixed length, so all rows have one length
            rows = []
            with torch_threads(1):
                for batch in _equal_length_batches([0] * len(missing), self.text_encoder.device):
                    texts = [missing[i] for i in batch]
                    hidden, pooled = encode_texts(self.tokenizer, self.text_encoder, texts)
                    rows += list(zip(hidden.cpu(), pooled.cpu()))
            return rows

        rows = _recall(self._memo, list(texts), encode_missing, self.max_entries)
        device = device or self.text_encoder.device
        return torch.stack([h for h, _ in rows]).to(device), torch.stack([p for _, p in rows]).to(device)


class CachedTokenStates:
    """A frozen text encoder's token states per text, memoised (L-CoIns' language tokens).

    Each text is encoded at its own length (misses batched only with texts of that length, so no
    padding: exact and independent of the batch, :func:`_equal_length_batches`), then a call pads the
    batch to its longest text. Same outputs as running the encoder
    with ``padding="longest"`` on the real tokens; padded positions are zeros with mask 0.

    Args:
        max_length: texts are truncated to this many tokens (special tokens included).
    """

    def __init__(self, tokenizer, text_encoder, max_length: int, max_entries: int = 100_000):
        from collections import OrderedDict

        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.max_length, self.max_entries = max_length, max_entries
        self._memo: OrderedDict[str, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def __call__(self, texts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns token states (N, L, D) and the attention mask (N, L) int64, L = longest text."""
        encoder = getattr(self.text_encoder, "module", self.text_encoder)

        def encode_missing(missing: list[str]) -> list[torch.Tensor]:
            ids = [
                torch.tensor(row)
                for row in self.tokenizer(missing, truncation=True, max_length=self.max_length)["input_ids"]
            ]
            rows: list = [None] * len(missing)
            with torch_threads(1):
                for batch in _equal_length_batches([len(row) for row in ids], encoder.device):
                    batch_ids = torch.stack([ids[i] for i in batch]).to(encoder.device)
                    mask = torch.ones_like(batch_ids)
                    hidden = encoder(input_ids=batch_ids, attention_mask=mask).last_hidden_state
                    for i, h in zip(batch, hidden.cpu()):
                        rows[i] = h
            return rows

        rows = _recall(self._memo, list(texts), encode_missing, self.max_entries)
        length = max(r.shape[0] for r in rows)
        hidden = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            hidden[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = 1
        device = device or encoder.device
        return hidden.to(device), mask.to(device)
