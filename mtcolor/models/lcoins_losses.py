"""L-CoIns losses (LC section 3.7, eq. 13-16) and the counter-colour pseudo captions.

* :func:`smooth_l1_loss`: LC eq. 13, the Huber loss with threshold delta (1 in the paper) averaged
  over all predicted chroma values. The trainer applies it to ab divided by
  ``LCoInsModel.config.ab_norm`` (about [-1, 1]), as the released L-CoIns code does.
* :func:`token_similarity_logit`: LC eq. 14 before its sigmoid, ``mean_ij cos(x_i, y_j)`` between
  language tokens and group tokens (padding language tokens excluded from the mean); the similarity
  of eq. 14 is ``F(x, y) = sigmoid(token_similarity_logit(x, y))``.
* :func:`counter_color_loss`: LC eq. 15, per sample, from the four logits of eq. 14 (in log space).
* :func:`total_loss`: LC eq. 16, ``alpha * L_delta + beta * L_ctr`` (alpha = 1, beta = -1e-4): with
  a negative beta, minimising the total *maximises* L_ctr, a sum of log-probabilities that the true
  caption matches the true groups and not the pseudo ones, and vice versa.
* :func:`make_pseudo_captions`: the pseudo captions of LC eq. 14-15, made by replacing every colour
  word with a distant one from the shared colour lexicon. Captions without any colour word have no
  counterpart; their ``has_color`` flag is False and :func:`counter_color_loss` callers leave them
  out of the mean (see :func:`masked_mean`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..lexicon import ColorLexicon, default_lexicon

__all__ = [
    "counter_color_loss",
    "make_pseudo_captions",
    "masked_mean",
    "smooth_l1_loss",
    "token_similarity_logit",
    "total_loss",
]


def smooth_l1_loss(prediction: torch.Tensor, target: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """LC eq. 13: mean over all elements of ``0.5 x^2`` where ``|x| < delta``, else ``delta (|x| - delta / 2)``.

    Args:
        prediction: predicted chroma, any shape (the trainer passes (B, 2, H, W) normalised ab).
        target: ground truth of the same shape.
        delta: the threshold (paper: 1).

    Returns:
        A scalar tensor.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction has shape {tuple(prediction.shape)} but target has {tuple(target.shape)}; they must match."
        )
    if delta <= 0:
        raise ValueError(f"delta={delta}; the smooth-L1 threshold must be > 0 (paper: 1).")
    return F.huber_loss(prediction, target.to(prediction.dtype), delta=delta)


def token_similarity_logit(
    x: torch.Tensor, y: torch.Tensor, x_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """LC eq. 14 before its sigmoid: ``1 / (N_L N_G) sum_i sum_j cos(x_i, y_j)`` per sample.

    The similarity of eq. 14 is ``F(x, y) = sigmoid(token_similarity_logit(x, y))``;
    :func:`counter_color_loss` takes the logarithms of ``F`` and ``1 - F`` from this logit directly.

    Args:
        x: (B, N_L, D) projected language tokens (R_lag or R'_lag).
        y: (B, N_G, D) projected group tokens (R_grp or R'_grp).
        x_mask: optional (B, N_L) bool/0-1 mask of real language tokens; padded tokens are left out
            of the mean (N_L counts real tokens only).

    Returns:
        (B,) mean cosines in [-1, 1].
    """
    cosine = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(1, 2)  # (B, N_L, N_G)
    per_token = cosine.mean(dim=-1)  # (B, N_L)
    if x_mask is None:
        return per_token.mean(dim=-1)
    weights = x_mask.to(per_token.dtype)
    return (per_token * weights).sum(-1) / weights.sum(-1).clamp_min(1.0)


def counter_color_loss(
    text_embeds: torch.Tensor,
    group_embeds: torch.Tensor,
    counter_text_embeds: torch.Tensor,
    counter_group_embeds: torch.Tensor,
    text_mask: torch.Tensor | None = None,
    counter_text_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """LC eq. 15 per sample:

        L_ctr = log(F(R_lag, R_grp) (1 - F(R'_lag, R_grp))) + log(F(R'_lag, R'_grp) (1 - F(R_lag, R'_grp)))

    computed with log-sigmoids (``log sigma(s)`` and ``log(1 - sigma(s)) = log sigma(-s)``), which is
    the same value without underflow.

    Args:
        text_embeds: (B, N_L, D) R_lag from the true caption.
        group_embeds: (B, N_G, D) R_grp from the pass with the true caption.
        counter_text_embeds: (B, N_L', D) R'_lag from the pseudo caption.
        counter_group_embeds: (B, N_G, D) R'_grp from the pass with the pseudo caption.
        text_mask: optional (B, N_L) mask of real tokens of the true caption.
        counter_text_mask: optional (B, N_L') mask of real tokens of the pseudo caption.

    Returns:
        (B,) values <= 0 (log-probabilities); the training objective uses ``beta * mean`` with beta < 0.
    """
    s_true = token_similarity_logit(text_embeds, group_embeds, text_mask)
    s_fake_on_true = token_similarity_logit(counter_text_embeds, group_embeds, counter_text_mask)
    s_fake = token_similarity_logit(counter_text_embeds, counter_group_embeds, counter_text_mask)
    s_true_on_fake = token_similarity_logit(text_embeds, counter_group_embeds, text_mask)
    return (
        F.logsigmoid(s_true)
        + F.logsigmoid(-s_fake_on_true)
        + F.logsigmoid(s_fake)
        + F.logsigmoid(-s_true_on_fake)
    )


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B,) over ``mask`` (B,) True entries; 0 (with a gradient path) if none."""
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def total_loss(
    smooth_l1: torch.Tensor, counter_color: torch.Tensor, alpha: float = 1.0, beta: float = -1e-4
) -> torch.Tensor:
    """LC eq. 16: ``alpha * L_delta + beta * L_ctr`` (paper: alpha = 1, beta = -1e-4)."""
    return alpha * smooth_l1 + beta * counter_color


def make_pseudo_captions(
    captions: Sequence[str],
    lexicon: ColorLexicon | None = None,
    rng: random.Random | None = None,
    min_distance: float = 20.0,
) -> tuple[list[str], torch.Tensor]:
    """Pseudo captions for the counter-colour loss: every colour word replaced by a distant one.

    Args:
        captions: B captions.
        lexicon: the colour lexicon (default: the shared extended lexicon).
        rng: ``random.Random`` for the substitutes; the global ``random`` module's generator if None.
        min_distance: minimum CIE76 distance between a colour word's prototype and its substitute.

    Returns:
        ``(pseudo_captions, has_color)``: B strings, and a (B,) bool tensor that is False for captions
        without any colour word (their pseudo caption is the caption itself).
    """
    if isinstance(captions, str):
        raise TypeError("captions is a single str; pass a list of captions (one per image).")
    lexicon = lexicon or default_lexicon("extended")
    rng = rng if rng is not None else random  # the module-level generator (Accelerate checkpoints it)
    has_color = [lexicon.has_color(c) for c in captions]
    pseudo = [lexicon.replace(c, rng, min_distance) if ok else c for c, ok in zip(captions, has_color)]
    return pseudo, torch.tensor(has_color, dtype=torch.bool)
