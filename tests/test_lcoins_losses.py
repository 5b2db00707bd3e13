"""L-CoIns losses against direct transcriptions of LC eq. 13-16, and the pseudo captions."""

import math
import random

import pytest
import torch

from mtcolor.lexicon import default_lexicon
from mtcolor.models.lcoins_losses import (
    counter_color_loss,
    make_pseudo_captions,
    masked_mean,
    smooth_l1_loss,
    token_similarity_logit,
    total_loss,
)


@pytest.mark.parametrize("delta", [1.0, 0.5])
def test_smooth_l1_eq_13(delta):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 2, 5, 5, generator=g) * 2, torch.randn(2, 2, 5, 5, generator=g)
    diff = pred - target
    n_p = diff.numel()
    small = (diff.abs() < delta).float()
    expected = (0.5 * diff**2 * small).sum() / n_p + (
        delta * (diff.abs() - 0.5 * delta) * (1 - small)
    ).sum() / n_p
    torch.testing.assert_close(smooth_l1_loss(pred, target, delta), expected)
    with pytest.raises(ValueError, match="shape"):
        smooth_l1_loss(pred, target[:1])
    with pytest.raises(ValueError, match="delta"):
        smooth_l1_loss(pred, target, 0.0)


def _similarity_reference(x, y, mask=None):
    out = []
    for b in range(x.shape[0]):
        rows = [i for i in range(x.shape[1]) if mask is None or mask[b, i]]
        total = sum(
            torch.nn.functional.cosine_similarity(x[b, i], y[b, j], dim=0)
            for i in rows
            for j in range(y.shape[1])
        )
        out.append(torch.sigmoid(total / (len(rows) * y.shape[1])))
    return torch.stack(out)


def test_similarity_eq_14_with_and_without_padding():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 5, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    torch.testing.assert_close(torch.sigmoid(token_similarity_logit(x, y)), _similarity_reference(x, y))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(
        torch.sigmoid(token_similarity_logit(x, y, mask)), _similarity_reference(x, y, mask)
    )


def test_counter_color_loss_hand_computed():
    # R_lag . R_grp: cos 1; R'_lag . R_grp: cos 0; R'_lag . R'_grp: cos 1; R_lag . R'_grp: cos 0.
    r_lag, r_grp = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[2.0, 0.0]]])
    r_lag_p, r_grp_p = torch.tensor([[[0.0, 3.0]]]), torch.tensor([[[0.0, 0.5]]])
    sig1 = 1 / (1 + math.exp(-1))
    expected = math.log(sig1 * (1 - 0.5)) + math.log(sig1 * (1 - 0.5))
    value = counter_color_loss(r_lag, r_grp, r_lag_p, r_grp_p)
    assert value.shape == (1,)
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_counter_color_loss_eq_15_transcription():
    g = torch.Generator().manual_seed(1)
    r_lag, r_grp = torch.randn(2, 6, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    r_lag_p, r_grp_p = torch.randn(2, 7, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    m, m_p = torch.ones(2, 6, dtype=torch.bool), torch.ones(2, 7, dtype=torch.bool)
    m[1, 4:] = False
    m_p[0, 5:] = False

    def f(x, y, mask):
        return _similarity_reference(x, y, mask)

    expected = torch.log(f(r_lag, r_grp, m) * (1 - f(r_lag_p, r_grp, m_p))) + torch.log(
        f(r_lag_p, r_grp_p, m_p) * (1 - f(r_lag, r_grp_p, m))
    )
    torch.testing.assert_close(counter_color_loss(r_lag, r_grp, r_lag_p, r_grp_p, m, m_p), expected)


def test_total_loss_eq_16_and_its_sign():
    assert total_loss(torch.tensor(0.5), torch.tensor(-2.0)).item() == pytest.approx(0.5 + 2e-4)
    assert total_loss(torch.tensor(0.5), torch.tensor(-2.0), alpha=2.0, beta=-1.0).item() == pytest.approx(
        3.0
    )
    # beta < 0: a gradient-descent step on the total raises L_ctr (better true/pseudo separation).
    g = torch.Generator().manual_seed(2)
    r_grp = torch.randn(1, 3, 4, generator=g, requires_grad=True)
    r_lag, r_lag_p, r_grp_p = (torch.randn(1, n, 4, generator=g) for n in (5, 5, 3))
    before = counter_color_loss(r_lag, r_grp, r_lag_p, r_grp_p)
    total_loss(torch.tensor(0.0), before.mean()).backward()
    with torch.no_grad():
        after = counter_color_loss(r_lag, r_grp - 10.0 * r_grp.grad, r_lag_p, r_grp_p)
    assert after.item() > before.item()


def test_masked_mean_ignores_samples_without_colour_words():
    values = torch.tensor([1.0, 5.0, 3.0])
    assert masked_mean(values, torch.tensor([True, False, True])).item() == pytest.approx(2.0)
    assert masked_mean(values, torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_pseudo_captions_replace_every_colour_word_with_a_distant_one():
    lexicon = default_lexicon("extended")
    captions = ["a red car next to a light blue house", "a man walking a dog", "", "Grey sky"]
    pseudo, has_color = make_pseudo_captions(captions, lexicon, random.Random(0))
    assert has_color.tolist() == [True, False, False, True]
    assert pseudo[1] == captions[1] and pseudo[2] == ""
    for original, fake in ((captions[0], pseudo[0]), (captions[3], pseudo[3])):
        old, new = lexicon.find(original), lexicon.find(fake)
        assert len(new) == len(old) and fake != original
        for a, b in zip(old, new):
            assert lexicon.distance(lexicon.lab_of(a.word), b.word).item() >= 20.0
    assert make_pseudo_captions(captions, lexicon, random.Random(0))[0] == pseudo  # seeded
    with pytest.raises(TypeError, match="captions"):
        make_pseudo_captions("a red car", lexicon)
