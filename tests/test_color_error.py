import math

import pytest
import torch

from mtcolor.chroma_alignment import gamut_factor
from mtcolor.color import lab_to_rgb, rgb_to_lab
from mtcolor.color_targets import parse_color
from mtcolor.metrics import (
    InstanceColorError,
    ciede2000,
    instance_color_errors,
    summarize_color_errors,
)

# Sharma, Wu and Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes,
# supplementary test data and mathematical observations": pairs 1, 7, 13, 17-20, 25, 28, 31 and 34 of
# their 34 published test pairs (Lab 1, Lab 2, deltaE00), as shipped in scikit-image's test data.
SHARMA_PAIRS = [
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, -0.0010, 2.4900), (50.0, 0.0009, -2.4900), 4.8045),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((50.0, 2.5, 0.0), (61.0, -5.0, 29.0), 22.8977),
    ((50.0, 2.5, 0.0), (56.0, -27.0, -3.0), 31.9030),
    ((50.0, 2.5, 0.0), (58.0, 24.0, 15.0), 19.4535),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


def test_ciede2000_wiring_reproduces_sharmas_published_pairs():
    first = torch.tensor([p[0] for p in SHARMA_PAIRS])
    second = torch.tensor([p[1] for p in SHARMA_PAIRS])
    expected = torch.tensor([p[2] for p in SHARMA_PAIRS], dtype=torch.float64)
    assert torch.allclose(ciede2000(first, second), expected, atol=1e-4)
    assert torch.allclose(ciede2000(second, first), expected, atol=1e-4)  # argument order does not matter
    assert torch.allclose(ciede2000(first[3], second[3]), expected[3], atol=1e-4)  # a single pair (3,)


def painted(labs, size=(24, 32), regions=None) -> tuple[torch.Tensor, torch.Tensor]:
    """An sRGB image (1, 3, H, W) whose instance k (label map (1, H, W)) has Lab ``labs[k - 1]``
    (a (3,) colour or a (3, n) tensor of per-pixel colours) in its region (default: vertical bands)."""
    height, width = size
    labels = torch.zeros(height, width, dtype=torch.long)
    lab = torch.zeros(3, height, width)
    lab[0] = 50.0
    for k, value in enumerate(labs, start=1):
        region = regions[k - 1] if regions else torch.zeros(height, width, dtype=torch.bool)
        if regions is None:
            region[:, (k - 1) * width // len(labs) : k * width // len(labs)] = True
        labels[region] = k
        value = torch.as_tensor(value, dtype=torch.float32)
        lab[:, region] = value[:, None] if value.ndim == 1 else value
    return lab_to_rgb(lab[None]), labels[None]


def test_an_instance_painted_with_its_target_has_no_error():
    targets = [parse_color("#d0302a"), parse_color("teal"), parse_color("#ffd700")]
    image, labels = painted([t.lab for t in targets])
    errors = instance_color_errors(image, labels, [targets])
    assert [e.instance for e in errors] == [1, 2, 3]
    for error, target in zip(errors, targets):
        assert error.delta_e00 < 0.05 and abs(error.chroma_diff) < 0.1 and error.hue_error < 0.1
        assert error.passes and error.pixels == labels.eq(error.instance).sum()
        assert error.target == target.lab
        assert error.delta_e00 == pytest.approx(float(ciede2000(error.target_at_l, error.measured)))


def test_the_target_is_judged_at_the_instance_lightness():
    target = parse_color("#3060c0")  # L 42; its chroma fits sRGB from L 35 to 63
    assert bool((gamut_factor(target.ab, torch.tensor([36.0, 50.0, 62.0])) == 1).all())
    for lightness in (36.0, 50.0, 62.0):
        image, labels = painted([(lightness, *target.ab)])
        (error,) = instance_color_errors(image, labels, [[target]])
        assert error.target_at_l[0] == pytest.approx(lightness, abs=0.05)
        assert error.delta_e00 < 0.1 and error.passes
    # the same colour judged against the target's own L would be far off: L is not the model's choice
    assert float(ciede2000((62.0, *target.ab), target.lab)) > 15


def test_errors_grow_with_the_hue_and_chroma_departure_from_the_target():
    target = parse_color("#ff8800")  # orange, hue ~ 62 degrees
    chroma, angle = math.hypot(*target.ab), math.atan2(target.ab[1], target.ab[0])
    lightness = 60.0
    rotations = [0.0, 5.0, 15.0, 30.0]  # towards red (lower hue angle)
    scaled = [chroma * 0.5] * len(rotations)  # in gamut at L 60 for every hue here
    labs = [
        (lightness, c * math.cos(angle - math.radians(r)), c * math.sin(angle - math.radians(r)))
        for r, c in zip(rotations, scaled)
    ]
    image, labels = painted(labs)
    errors = instance_color_errors(image, labels, [[(lightness, *target.ab)] * 4])
    hue_errors = [e.hue_error for e in errors]
    delta_es = [e.delta_e00 for e in errors]
    assert hue_errors == sorted(hue_errors) and delta_es == sorted(delta_es)
    assert [round(h) for h in hue_errors] == [0, 5, 15, 30]
    factors = [0.25, 0.5, 0.75]  # weaker instances of the target's hue
    image, labels = painted(
        [(lightness, f * chroma * math.cos(angle), f * chroma * math.sin(angle)) for f in factors]
    )
    weaker = instance_color_errors(image, labels, [[target] * 3])
    diffs = [e.chroma_diff for e in weaker]
    assert all(d < 0 for d in diffs) and diffs == sorted(diffs)  # too weak, less so as the chroma grows
    assert all(e.hue_error < 0.5 for e in weaker)


def test_an_out_of_gamut_target_keeps_its_hue_at_the_instance_lightness():
    target = parse_color("#00ff00")  # L 88; far out of gamut at L 30
    image, labels = painted([(30.0, -20.0, 20.0)])
    (error,) = instance_color_errors(image, labels, [[target]])
    at_l = torch.tensor(error.target_at_l)
    assert math.hypot(*at_l[1:]) < 0.6 * target.chroma
    assert math.atan2(at_l[2], at_l[1]) == pytest.approx(math.atan2(target.ab[1], target.ab[0]), abs=1e-3)
    rgb = lab_to_rgb(at_l.view(1, 3, 1, 1))
    assert float((rgb_to_lab(rgb).view(3) - at_l).abs().max()) < 0.05  # displayable without clipping


def test_the_measured_colour_is_the_dominant_mode_not_the_mean():
    target = parse_color("#d0302a")
    height, width = 20, 20
    body = torch.zeros(height, width, dtype=torch.bool)
    body[:, :14] = True  # 70% red body, 30% dark gray tyres in one instance
    per_pixel = torch.empty(3, height * width)
    per_pixel[:, body.flatten()] = torch.tensor(target.lab)[:, None]
    per_pixel[:, ~body.flatten()] = torch.tensor([20.0, 0.0, 0.0])[:, None]
    image, labels = painted(
        [per_pixel], size=(height, width), regions=[torch.ones(height, width, dtype=torch.bool)]
    )
    (error,) = instance_color_errors(image, labels, [[target]])
    assert error.delta_e00 < 0.5  # the tyres do not pull the measurement
    assert error.measured[1:] == pytest.approx(target.ab, abs=0.3)


def test_achromatic_targets_have_no_hue_error_and_the_threshold_decides_passes():
    image, labels = painted([(60.0, 0.0, 0.0), (60.0, 4.0, 3.0)])
    errors = instance_color_errors(image, labels, [[parse_color("white"), parse_color("white")]])
    assert all(math.isnan(e.hue_error) for e in errors)
    assert errors[0].delta_e00 < 0.1  # white at L 60 is the neutral gray of L 60
    assert 2 < errors[1].delta_e00 < 6
    strict = instance_color_errors(image, labels, [[None, parse_color("white")]], threshold=1.0)
    assert [e.instance for e in strict] == [2] and not strict[0].passes


def test_untargeted_and_missing_instances():
    image, labels = painted([(50.0, 20.0, 20.0), (50.0, -20.0, 20.0)])
    labels[labels == 2] = 0  # instance 2 has no pixels
    errors = instance_color_errors([image[0]], [labels[0]], [[None, (50.0, -20.0, 20.0)]])
    (missing,) = errors
    assert missing.instance == 2 and missing.pixels == 0 and not missing.passes
    assert math.isnan(missing.delta_e00) and math.isnan(missing.hue_error)


def test_summary_reports_medians_and_the_share_within_the_threshold():
    def record(delta, chroma, hue):
        return InstanceColorError(0, 1, (0, 0, 0), (0, 0, 0), (0, 0, 0), delta, chroma, hue, delta <= 5, 10)

    records = [
        record(1.0, -2.0, 4.0),
        record(3.0, -4.0, math.nan),
        record(9.0, 1.0, 10.0),
        record(math.nan, 0, 0),
    ]
    summary = summarize_color_errors(records)
    assert summary.count == 4 and summary.share_within == 0.5
    assert summary.median_delta_e00 == 3.0 and summary.median_chroma_diff == -1.0
    assert summary.median_hue_error == 4.0
    assert summary.to_dict()["threshold"] == 5.0
    empty = summarize_color_errors([])
    assert empty.count == 0 and math.isnan(empty.share_within) and math.isnan(empty.median_delta_e00)


def test_bad_inputs_name_the_argument():
    image, labels = painted([(50.0, 20.0, 20.0), (50.0, -20.0, 20.0)])
    with pytest.raises(ValueError, match="targets has 2 entries but there are 1 images"):
        instance_color_errors(image, labels, [[None, None], [None, None]])
    with pytest.raises(ValueError, match=r"targets\[0\] has only 1 entries"):
        instance_color_errors(image, labels, [[None]])
    with pytest.raises(TypeError, match=r"targets\[0\]\[1\]='red'"):
        instance_color_errors(image, labels, [[None, "red"]])
    with pytest.raises(ValueError, match=r"targets\[0\]\[0\]=\(50.0, nan, 0.0\)"):
        instance_color_errors(image, labels, [[(50.0, math.nan, 0.0), None]])
    with pytest.raises(ValueError, match="threshold=0"):
        instance_color_errors(image, labels, [[None, None]], threshold=0)
    with pytest.raises(ValueError, match="share one"):
        instance_color_errors([image[0], image[0, :, :5]], [labels[0], labels[0]], [[None], [None]])
