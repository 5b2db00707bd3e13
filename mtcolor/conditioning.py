"""Text and instance conditioning shared by the MT-Color pipeline and the training scripts."""

from __future__ import annotations

import torch


@torch.no_grad()
def encode_texts(tokenizer, text_encoder, texts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-encode texts.

    Returns:
        hidden states (N, L, D) (the UNet's ``encoder_hidden_states``; L = tokenizer max length)
        and pooled embeddings (N, D) (the instance encoder's text input, MT eq. 3).
    """
    device = device or text_encoder.device
    ids = tokenizer(
        list(texts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    out = text_encoder(ids, return_dict=True)
    return out.last_hidden_state, out.pooler_output


def encode_instance_texts(
    tokenizer, text_encoder, texts: list[list[str]], device=None, dtype=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled CLIP embeddings of every instance text of a batch, padded to the longest list.

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
        _, pooled = encode_texts(tokenizer, text_encoder, flat, device)
        start = 0
        for b, sample in enumerate(texts):
            embeds[b, : len(sample)] = pooled[start : start + len(sample)].to(dtype)
            start += len(sample)
    return embeds, counts
