"""L-CoIns' classification head (mtcolor/models/lcoins_bins.py, ``train_lcoins.py --ab_loss
classification``): Zhang, Isola and Efros (2016) quantised ab classes, soft encoding, class
rebalancing and annealed-mean decoding, against direct transcriptions of the paper's equations."""

from pathlib import Path

import pytest
import torch
from mtcolor.training import train_lcoins
from test_lcoins_training import pairs_data, tiny_args, write_pairs  # noqa: F401  (fixture)

from mtcolor import LCoInsPipeline
from mtcolor.color import rgb_to_lab
from mtcolor.models.lcoins import LCOINS_PRESETS, LCoInsModel
from mtcolor.models.lcoins_bins import (
    ab_bins,
    annealed_mean,
    classification_loss,
    empirical_prior,
    nearest_classes,
    rebalancing_weights,
    soft_encode,
)


@pytest.fixture(scope="module")
def bins():
    return ab_bins(10.0)


def test_bins_cover_the_srgb_gamut_on_a_grid_of_ten(bins):
    assert bins.shape == (261, 2)
    assert torch.equal(bins, torch.round(bins / 10) * 10)  # centres on the 10-grid
    assert len({tuple(b) for b in bins.tolist()}) == len(bins)
    rgb = torch.rand(1, 3, 50, 50, generator=torch.Generator().manual_seed(0))
    ab = rgb_to_lab(rgb)[0, 1:].flatten(1).T  # 2,500 random sRGB colours
    nearest = torch.cdist(ab, bins).min(1).values
    assert nearest.max() <= 5 * 2**0.5 + 1e-4  # every colour lies in some kept cell
    assert bins[:, 0].min() >= -90 and bins[:, 0].max() <= 100 and bins[:, 1].min() >= -110


def test_annealed_mean_is_the_softmax_over_t_weighted_centres(bins):
    logits = torch.randn(2, len(bins), 3, 4, generator=torch.Generator().manual_seed(1))
    t = 0.38
    z = torch.softmax(logits, 1)  # f_T(z) = exp(log z / T) / sum exp(log z / T)
    f = torch.exp(torch.log(z) / t) / torch.exp(torch.log(z) / t).sum(1, keepdim=True)
    expected = (f.unsqueeze(2) * bins.view(1, len(bins), 2, 1, 1)).sum(1)
    torch.testing.assert_close(annealed_mean(logits, bins, t), expected, rtol=1e-4, atol=1e-3)
    mean = annealed_mean(logits, bins, 1.0)
    top = logits.argmax(1, keepdim=True)
    peaked = logits.scatter(1, top, logits.max(1, keepdim=True).values + 1)  # a clear mode per pixel
    mode = bins[top[:, 0]].permute(0, 3, 1, 2)
    torch.testing.assert_close(annealed_mean(peaked, bins, 0.01), mode, rtol=0, atol=0.01)  # T -> 0: the mode
    # lower temperature: further from the (desaturated) mean, toward the mode
    assert (annealed_mean(logits, bins, t) - mode).norm() < (mean - mode).norm()
    with pytest.raises(ValueError, match="annealed_temperature"):
        annealed_mean(logits, bins, 0.0)


def test_soft_encoding_spreads_each_pixel_over_its_five_nearest_classes(bins):
    ab = torch.tensor([[12.0, -33.0], [40.0, 40.0]]).T.reshape(1, 2, 1, 2)
    target = soft_encode(ab, bins)
    assert target.shape == (1, len(bins), 1, 2)
    torch.testing.assert_close(target.sum(1), torch.ones(1, 1, 2))
    assert torch.all((target > 0).sum(1) == 5)
    for j, point in enumerate(([12.0, -33.0], [40.0, 40.0])):
        d2 = ((bins - torch.tensor(point)) ** 2).sum(1)
        order = d2.argsort()[:5]
        g = torch.exp(-d2[order] / (2 * 5.0**2))
        torch.testing.assert_close(target[0, order, 0, j], g / g.sum())
    assert target[0, :, 0, 1].argmax() == ((bins - torch.tensor([40.0, 40.0])) ** 2).sum(1).argmin()


def test_rebalancing_weights_follow_zhang_eq_4(bins):
    prior = torch.zeros(len(bins))
    gray = ((bins**2).sum(1)).argmin()
    prior[gray] = 0.9  # mostly gray pixels, as in natural images
    prior[0] = 0.1
    weights = rebalancing_weights(prior, bins, 0.5)
    centres = bins.double()
    kernel = torch.exp(-((centres[:, None] - centres[None]) ** 2).sum(-1) / 50.0)
    smooth = kernel @ prior.double()
    smooth = smooth / smooth.sum()
    expected = 1 / (0.5 * smooth + 0.5 / len(bins))
    expected = expected / (smooth * expected).sum()
    torch.testing.assert_close(weights.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((smooth * weights.double()).sum(), torch.tensor(1.0, dtype=torch.float64))
    assert weights[gray] < weights[0] < weights[len(bins) // 2 + 40]  # the rarer, the heavier
    torch.testing.assert_close(
        rebalancing_weights(prior, bins, 1.0), torch.ones(len(bins))
    )  # lambda 1: uniform
    with pytest.raises(ValueError, match="rebalance_lambda"):
        rebalancing_weights(prior, bins, 1.5)


def test_empirical_prior_counts_nearest_classes(bins):
    ab = torch.tensor([[0.0, 0.0], [1.0, 2.0], [31.0, -48.0]]).T.reshape(1, 2, 1, 3)
    prior = empirical_prior([ab, ab[:, :, :, :1]], bins)
    zero = ((bins**2).sum(1)).argmin()
    other = ((bins - torch.tensor([30.0, -50.0])) ** 2).sum(1).argmin()
    assert prior[zero] == pytest.approx(0.75) and prior[other] == pytest.approx(0.25)


@pytest.mark.parametrize("bin_size", [10.0, 7.0])
def test_windowed_neighbour_search_equals_the_dense_search(bin_size):
    """The 5x5-cell window search (with its dense fallback at the gamut's edge and outside the grid)
    returns the same classes and distances as a top-k over the distances to every centre."""
    centres = ab_bins(bin_size)
    generator = torch.Generator().manual_seed(3)
    inside = rgb_to_lab(torch.rand(2, 3, 16, 16, generator=generator))[:, 1:]  # sRGB colours
    beyond = (torch.rand(2, 2, 16, 16, generator=generator) * 2 - 1) * 160  # also far off the gamut
    for ab in (inside, beyond, torch.zeros(1, 2, 2, 2)):
        nearest, index = nearest_classes(ab, centres, 5)
        points = ab.permute(0, 2, 3, 1).reshape(-1, 1, 2)
        dense = ((points - centres) ** 2).sum(-1)  # (N, Q), direct transcription
        expected, expected_index = dense.topk(5, dim=-1, largest=False)
        torch.testing.assert_close(nearest.reshape(-1, 5), expected, rtol=1e-5, atol=1e-3)
        # the same classes (exact ties, as the four around a centre, may come in another order)
        assert torch.equal(index.reshape(-1, 5).sort(-1).values, expected_index.sort(-1).values)
    with pytest.raises(ValueError, match="regular grid"):
        nearest_classes(inside, centres + torch.rand(centres.shape, generator=generator))


def test_classification_loss_is_the_weighted_soft_cross_entropy(bins):
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, len(bins), 4, 4, generator=generator, requires_grad=True)
    target_ab = torch.randn(2, 2, 4, 4, generator=generator) * 30
    weights = torch.rand(len(bins), generator=generator) + 0.5
    # the dense transcription: distances to all centres, 5 nearest, Gaussian sigma 5, normalised
    d2 = ((target_ab.permute(0, 2, 3, 1).unsqueeze(-2) - bins) ** 2).sum(-1)  # (B, H, W, Q)
    nearest, order = d2.topk(5, dim=-1, largest=False)
    g = torch.exp(-nearest / (2 * 5.0**2))
    z = torch.zeros_like(d2).scatter(-1, order, g / g.sum(-1, keepdim=True)).permute(0, 3, 1, 2)
    torch.testing.assert_close(soft_encode(target_ab, bins), z)
    v = weights[d2.argmin(-1)]  # the weight of each pixel's nearest class
    expected = (-(v * (z * torch.log_softmax(logits, 1)).sum(1))).mean()
    loss = classification_loss(logits, target_ab, bins, weights)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad)
    better = logits.detach() + 20 * z  # mass on the target classes lowers the loss
    assert classification_loss(better, target_ab, bins, weights) < expected


def test_classification_model_decodes_its_logits_and_round_trips(tmp_path, bins):
    config = {**LCOINS_PRESETS["tiny"], "ab_bin_size": 10.0}
    torch.manual_seed(0)
    model = LCoInsModel(**config).eval()
    lightness = torch.rand(2, 1, 32, 32) * 100
    text = torch.randn(2, 5, config["text_embed_dim"])
    with torch.no_grad():
        output = model(lightness, text)
    assert output.ab_logits.shape == (2, len(bins), 32, 32)
    torch.testing.assert_close(output.ab, annealed_mean(output.ab_logits, bins, 0.38))
    model.save_pretrained(tmp_path / "m")
    loaded = LCoInsModel.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(lightness, text).ab, output.ab)
        logits_only = model(lightness, text, decode_ab=False)  # what the training loss needs
    assert logits_only.ab is None and torch.equal(logits_only.ab_logits, output.ab_logits)
    regression = LCoInsModel(**LCOINS_PRESETS["tiny"])
    assert regression(lightness, text).ab_logits is None  # regression head
    assert regression(lightness, text, decode_ab=False).ab.shape == (2, 2, 32, 32)  # nothing to skip


def test_classification_training_runs_and_records_its_loss(tmp_path, pairs_data):  # noqa: F811
    args = tiny_args(pairs_data, tmp_path / "out", "--max_train_steps", "2", "--ab_loss", "classification",
                     "--class_prior_images", "4", "--num_validation_samples", "0")  # fmt: skip
    folder = train_lcoins.main(args)
    pipe = LCoInsPipeline.from_pretrained(folder)
    assert pipe.model.config.ab_bin_size == 10.0 and pipe.model.config.annealed_temperature == 0.38
    card = (Path(folder) / "README.md").read_text()
    assert "classification over 261 ab cells of 10 Lab units" in card and "T = 0.38" in card
    marker = train_lcoins.run_info(args, pipe.model)
    assert marker["loss"]["ab_loss"] == "classification" and marker["model_config"]["ab_bin_size"] == 10.0
    plain = tiny_args(pairs_data, tmp_path / "plain")
    plain_info = train_lcoins.run_info(plain, train_lcoins.build_components(plain)[0])
    assert "ab_loss" not in plain_info["loss"] and "ab_bin_size" not in plain_info["model_config"]
    for flag, value in (
        ("--rebalance_lambda", "2"),
        ("--annealed_temperature", "0"),
        ("--ab_bin_size", "-1"),
    ):
        with pytest.raises(SystemExit):
            tiny_args(pairs_data, tmp_path, flag, value)
