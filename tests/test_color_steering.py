"""Colour steering (mtcolor.color_steering): cell weights, gamut-aware targets, the x0 correction
against a known linear probe, the eps / v rewrites, and the schedule."""

import math

import pytest
import torch

from mtcolor.color import fit_chroma_to_gamut
from mtcolor.color_steering import (
    DecodedCellColors,
    instance_cell_weights,
    steer_x0,
    steered_prediction,
    steering_strength,
    target_chroma,
)


def test_cell_weights_are_the_share_of_each_cell():
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[0, :4, :2] = 1  # half of the two top-left 4x4 cells' ... left halves
    label[0, 4:, 4:] = 2
    weights = instance_cell_weights(label, torch.tensor([[1, 2, 0]]), (2, 2))
    assert weights.shape == (1, 3, 2, 2)
    torch.testing.assert_close(weights[0, 0], torch.tensor([[0.5, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(weights[0, 1], torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    assert weights[0, 2].sum() == 0  # an unused slot


def test_target_chroma_keeps_in_gamut_targets_and_fits_the_others_at_fixed_hue():
    lab = torch.tensor([[[50.0, 20.0, -10.0], [95.0, 60.0, 50.0]]])
    light = torch.tensor([[50.0, 95.0]])
    ab = target_chroma(lab, light)
    torch.testing.assert_close(ab[0, 0], torch.tensor([20.0, -10.0]))
    expected = fit_chroma_to_gamut(torch.tensor([[[95.0]]]), torch.tensor([[[60.0]], [[50.0]]]))[:, 0, 0]
    torch.testing.assert_close(ab[0, 1], expected)
    assert ab[0, 1].norm() < 60 and math.isclose(float(ab[0, 1, 1] / ab[0, 1, 0]), 50 / 60, rel_tol=1e-4)


class LinearProbe(torch.nn.Module):
    """ab = W z + c per cell: an exact, known probe."""

    def __init__(self):
        super().__init__()
        self.weight = torch.tensor([[3.0, -1.0, 0.5, 0.0], [0.5, 2.0, 0.0, -1.5]])
        self.bias = torch.tensor([1.0, -2.0])

    def forward(self, z):
        return torch.einsum("oc,bchw->bohw", self.weight, z) + self.bias.view(1, 2, 1, 1)


def test_steer_x0_moves_each_instance_to_its_target_and_leaves_other_cells():
    torch.manual_seed(0)
    probe = LinearProbe()
    x0 = torch.randn(2, 4, 6, 6)
    label = torch.zeros(2, 12, 12, dtype=torch.long)
    label[:, :6, :6] = 1
    label[:, 6:, 2:10] = 2
    weights = instance_cell_weights(label, torch.tensor([[1, 2], [1, 2]]), (6, 6))
    targets = torch.tensor([[[20.0, -5.0], [-8.0, 12.0]], [[0.0, 0.0], [5.0, 5.0]]])
    active = torch.tensor([[True, True], [False, True]])

    def error(x):
        ab = probe(x)
        mean = torch.einsum("rnhw,rchw->rnc", weights, ab) / weights.sum((-2, -1))[..., None]
        return (mean - targets).norm(dim=-1)

    before = error(x0)
    correction = steer_x0(x0, probe, weights, targets, active, iterations=4)
    after = error(x0 + correction)
    assert (after[active] < 0.05 * before[active]).all()  # near the target
    assert after[1, 0] == before[1, 0]  # an inactive instance is not steered
    untouched = (weights * active[..., None, None]).sum(1) == 0
    assert correction.abs().sum(1)[untouched].max() == 0  # cells of no steered instance keep x0
    assert steer_x0(x0, probe, weights, targets, torch.zeros_like(active)).abs().max() == 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_steered_prediction_implies_the_corrected_x0(prediction_type):
    torch.manual_seed(1)
    z, out = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 5, 5)
    a = torch.tensor(0.3)
    shift = torch.randn(1, 4, 5, 5)

    def x0_of(model_output):
        if prediction_type == "epsilon":
            return (z - (1 - a).sqrt() * model_output) / a.sqrt()
        return a.sqrt() * z - (1 - a).sqrt() * model_output

    steered = steered_prediction(out, z, a, lambda x0: shift, prediction_type)
    torch.testing.assert_close(x0_of(steered), x0_of(out) + shift, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(steered_prediction(out, z, a, torch.zeros_like, prediction_type), out)
    with pytest.raises(ValueError, match="prediction_type='sample'"):
        steered_prediction(out, z, a, torch.zeros_like, "sample")


def test_decoded_cell_colors_pool_the_decoded_pixels():
    image = torch.zeros(1, 3, 8, 8)
    image[..., :4, :] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)  # red top half
    reader = DecodedCellColors(lambda z: image)
    cells = reader(torch.zeros(1, 4, 2, 2))
    assert cells.shape == (1, 2, 2, 2) and cells[0, 0, 0, 0] > 60 and abs(float(cells[0, 0, 1, 0])) < 1e-3


def test_schedule():
    assert steering_strength(0, 20, 1.5, 0.5) == 1.5 and steering_strength(10, 20, 1.5, 0.5) == 0.0
