import math

import numpy as np
import pytest
import torch

from mtcolor import chroma_alignment as ca
from mtcolor.chroma_alignment import dominant_chroma_mode, gamut_factor, plan_alignment
from mtcolor.color import fit_chroma_to_gamut, lab_to_rgb, recombine_luminance, rgb_to_lab
from mtcolor.color_targets import parse_color
from mtcolor.metrics import instance_color_errors, summarize_color_errors


def gaussian_cloud(centre, count, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.tensor(centre, dtype=torch.float64)[:, None]
        + sigma * torch.randn(2, count, generator=g).double()
    )


def hue(ab) -> torch.Tensor:
    return torch.rad2deg(torch.atan2(ab[1], ab[0]))


def test_the_dominant_mode_is_the_largest_colour_not_the_densest():
    body = gaussian_cloud((45.0, 30.0), 700, 6.0, 0)  # a broad red body
    tyres = gaussian_cloud((0.0, 0.0), 300, 0.7, 1)  # a tight gray cluster: denser, smaller
    mode = dominant_chroma_mode(torch.cat([body, tyres], 1))
    assert mode.ab == pytest.approx((45.0, 30.0), abs=1.0)
    assert 0.65 < mode.share < 0.75
    assert float(mode.membership(torch.tensor([[45.0], [30.0]]))) == 1.0
    assert float(mode.membership(tyres).max()) == 0.0  # exactly 0: the tyres keep their colour
    # the robust covariance recovers the body's spread (sigma 6, plus the SIGMA_MIN floor)
    s_aa, s_ab, s_bb = mode.covariance
    assert s_aa == pytest.approx(36 + 4, rel=0.2) and s_bb == pytest.approx(36 + 4, rel=0.2) and abs(s_ab) < 5


def test_shallow_peaks_merge_and_deep_valleys_separate():
    near = torch.cat([gaussian_cloud((20.0, 0.0), 500, 3.0, 2), gaussian_cloud((26.0, 0.0), 500, 3.0, 3)], 1)
    assert dominant_chroma_mode(near).share > 0.95  # one colour with a flat top
    far = torch.cat([gaussian_cloud((20.0, 0.0), 550, 3.0, 2), gaussian_cloud((50.0, 0.0), 450, 3.0, 3)], 1)
    mode = dominant_chroma_mode(far)
    assert mode.ab == pytest.approx((20.0, 0.0), abs=0.7) and 0.5 < mode.share < 0.6


def test_merge_passes_match_a_direct_transcription():
    def basins(profile):  # two peaks on one row of the grid, at bins 62 and 66
        grid = torch.zeros(ca._BINS, ca._BINS, dtype=torch.float64)
        grid[64, 60 : 60 + len(profile)] = torch.tensor(profile, dtype=torch.float64)
        peaks = ca._hill_climb(grid)
        assert set(peaks.view(ca._BINS, ca._BINS)[64, 60:69].tolist()) == {
            64 * ca._BINS + 62,
            64 * ca._BINS + 66,
        }
        return ca._merge_basins(grid, peaks).view(ca._BINS, ca._BINS)[64]

    # pass = min(4, 5) = 4 on the boundary, 4 / 6 < 1 - DEPTH = 0.75: two colours
    assert basins([1, 4, 10, 5, 4, 5, 6, 4, 1])[66] == 64 * ca._BINS + 66
    # pass = min(8, 8.5) = 8, 8 / 9 >= 0.75: one colour, named by its higher peak
    assert basins([1, 4, 10, 9, 8, 8.5, 9, 4, 1])[66] == 64 * ca._BINS + 62


def shaded_instance(body_ab=(45.0, 30.0), size=(48, 64), seed=0, proportional=False):
    """L (1, H, W), ab (2, H, W) and labels (H, W): instance 1 is a shaded body (L 38-60, chroma
    noise 1.5) with a dark gray part (the "tyres"); instance 2 is untargeted; the rest background."""
    g = torch.Generator().manual_seed(seed)
    height, width = size
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    lightness = 40 + 18 * x + 2 * torch.sin(9 * y) + 0.5 * torch.randn(height, width, generator=g)
    ab = torch.tensor(body_ab).view(2, 1, 1) + 1.5 * torch.randn(2, height, width, generator=g)
    if proportional:  # a real surface with a cast shadow: (a, b) proportional to L + 16
        lightness[6:20, 20:34] = 22 + torch.rand(14, 14, generator=g)
        ab = ab * ((lightness + 16) / (49 + 16))
    labels = torch.zeros(height, width, dtype=torch.long)
    labels[4:40, 4:52] = 1
    tyres = torch.zeros(height, width, dtype=torch.bool)
    tyres[30:40, 8:20] = True
    tyres[30:40, 36:48] = True
    lightness[tyres] = 18 + torch.rand(int(tyres.sum()), generator=g)
    ab[:, tyres] = 0.8 * torch.randn(2, int(tyres.sum()), generator=g)
    labels[4:40, 54:62] = 2
    ab[:, labels == 2] = torch.tensor([[-20.0], [25.0]])
    ab[:, labels == 0] = torch.tensor([[5.0], [-30.0]])
    return lightness[None], ab, labels, tyres


IN_GAMUT = ["#c03070", "#8a5a2a", "#d0302a", "#4a6ab0", "#3a8a5a", "#5a5ac0", "#c06030"]


@pytest.mark.parametrize("code", IN_GAMUT)
def test_exact_mode_reaches_in_gamut_targets_and_keeps_the_rest(code):
    lightness, ab, labels, tyres = shaded_instance()
    target = parse_color(code)
    assert (
        float(gamut_factor(target.ab, lightness[0][(labels == 1) & ~tyres]).min()) == 1.0
    )  # in gamut on the body
    plan = plan_alignment(lightness, ab, labels, {1: target})
    before = recombine_luminance(lightness[None], ab[None])
    after = recombine_luminance(lightness[None], ab[None], label_map=labels[None], adjust=plan)
    (error,) = instance_color_errors(after, labels[None], [[target, None]])
    assert error.delta_e00 <= 2.0
    lab_before, lab_after = rgb_to_lab(before)[0], rgb_to_lab(after)[0]
    assert float((lab_after[0] - lightness[0]).abs().max()) < 0.05  # the input's L, exactly
    # tyres and everything outside the targeted instance: bit-identical to the plain recombination
    untouched = tyres | (labels != 1)
    assert torch.equal(after[0][:, untouched], before[0][:, untouched])
    # the body keeps its own variation: the spread of its chroma is unchanged (gain ~ 1 here)
    body = (labels == 1) & ~tyres
    ratio = math.hypot(*target.ab) / math.hypot(45.0, 30.0)
    spread_before = float(lab_before[1:, body].std(dim=1).norm())
    spread_after = float(lab_after[1:, body].std(dim=1).norm())
    assert spread_after == pytest.approx(spread_before * ratio, rel=0.2)


def test_exact_mode_delta_e_summary_on_synthetic_instances():
    errors = []
    for seed, code in enumerate(IN_GAMUT * 2):
        lightness, ab, labels, _ = shaded_instance(
            body_ab=(30.0 * math.cos(seed), 30.0 * math.sin(seed)), seed=seed
        )
        target = parse_color(code)
        plan = plan_alignment(lightness, ab, labels, [target, None])
        rgb = recombine_luminance(lightness[None], ab[None], label_map=labels[None], adjust=plan)
        errors += instance_color_errors(rgb, labels[None], [[target, None]])
    summary = summarize_color_errors(errors)
    assert summary.share_within == 1.0 and summary.median_delta_e00 < 1.0
    assert max(e.delta_e00 for e in errors) <= 2.0


def test_alignment_equals_a_direct_transcription_of_the_equations():
    lightness, ab, labels, _ = shaded_instance(seed=3)
    target = parse_color("#2a5bd0")
    plan = plan_alignment(lightness, ab, labels, [target])
    out = plan(lightness, ab, labels)
    item = plan.instances[0]
    mu = torch.tensor(item.mode.ab, dtype=torch.float64)
    t = torch.tensor(target.ab, dtype=torch.float64)
    k = min(t.norm() / mu.norm(), ca.GAIN_MAX)
    theta = math.atan2(t[1], t[0]) - math.atan2(mu[1], mu[0])
    rotation = torch.tensor(
        [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64
    )
    inside = labels == 1
    c = ab[:, inside].double()
    light = lightness[0][inside].double()
    w = item.mode.membership(c, light)
    mapped = t[:, None] + k * rotation @ (c - mu[:, None])
    expected = c + w * (mapped - c)
    assert torch.allclose(out[:, inside].double(), expected, atol=1e-3)
    assert item.gain == pytest.approx(float(k)) and item.rotation == pytest.approx(math.degrees(theta))


def test_shadows_become_shadows_of_the_target():
    lightness, ab, labels, tyres = shaded_instance(proportional=True, seed=4)
    target = parse_color("#2a5bd0")
    plan = plan_alignment(lightness, ab, labels, [target])
    out = plan(lightness, ab, labels)
    out = fit_chroma_to_gamut(lightness, out)  # as the recombination does
    body = (labels == 1) & ~tyres
    dark = body & (lightness[0] < 30)  # the cast shadow
    assert float(plan.instances[0].mode.membership(ab[:, dark], lightness[0][dark]).min()) > 0.95
    assert float(plan.instances[0].mode.membership(ab[:, dark]).min()) < 0.5  # not members without the test
    # chroma follows the light as before, at the target's hue
    aligned = out[:, dark]
    assert float((hue(aligned) - hue(torch.tensor(target.ab))).abs().max()) < 8
    expected = math.hypot(*target.ab) * (lightness[0][dark] + 16) / (plan.instances[0].mode.lightness + 16)
    assert torch.allclose(aligned.norm(dim=0), expected, rtol=0.15)
    assert torch.equal(out[:, tyres], ab[:, tyres])


def test_out_of_gamut_targets_lose_chroma_at_fixed_hue():
    lightness, ab, labels, tyres = shaded_instance(seed=5)
    target = parse_color("#00ff00")  # L 88: far outside sRGB at L 35-70
    plan = plan_alignment(lightness, ab, labels, [target])
    assert plan.instances[0].gamut_scale < 0.8
    rgb = recombine_luminance(lightness[None], ab[None], label_map=labels[None], adjust=plan)
    lab = rgb_to_lab(rgb)[0]
    body = (labels == 1) & ~tyres
    assert float((lab[0] - lightness[0]).abs().max()) < 0.05
    body_hue = hue(lab[1:, body])
    assert float((body_hue - hue(torch.tensor(target.ab))).abs().median()) < 2
    assert float(lab[1:, body].norm(dim=0).max()) < 0.8 * target.chroma
    (error,) = instance_color_errors(rgb, labels[None], [[target, None]])
    assert error.delta_e00 <= 2.0  # judged against the in-gamut target at the instance's L


def test_achromatic_targets_leave_a_neutral_instance():
    lightness, ab, labels, tyres = shaded_instance(seed=6)
    plan = plan_alignment(lightness, ab, labels, [parse_color("white")])
    out = plan(lightness, ab, labels)
    body = (labels == 1) & ~tyres
    assert plan.instances[0].gain < 0.01
    chroma = out[:, body].norm(dim=0)
    assert float(chroma.median()) < 0.05 and float(chroma.quantile(0.95)) < 0.5


def test_results_do_not_depend_on_the_tiling():
    lightness, ab, labels, _ = shaded_instance(seed=7)
    small_ab = ab[None, :, ::4, ::4]  # a working-resolution decode (12 x 16)
    small_l, small_labels = lightness[:, ::4, ::4], labels[::4, ::4]
    plan = plan_alignment(small_l, small_ab[0], small_labels, [parse_color("#c03070"), parse_color("teal")])
    one = recombine_luminance(lightness[None], small_ab, label_map=labels[None], adjust=plan)
    tiny = recombine_luminance(
        lightness[None], small_ab, label_map=labels[None], adjust=[plan], tile_pixels=7
    )
    assert torch.equal(one, tiny)
    plain = recombine_luminance(lightness[None], small_ab)
    assert torch.equal(one[0][:, labels == 0], plain[0][:, labels == 0])


def test_plans_accept_dicts_lists_and_lab_triples_and_report_missing_instances():
    lightness, ab, labels, _ = shaded_instance(seed=8)
    target = parse_color("#3a9a4a")
    from_list = plan_alignment(lightness, ab, labels, [target, None])
    from_dict = plan_alignment(lightness, ab, labels, {1: target, 5: (50.0, 10.0, 10.0)})
    from_lab = plan_alignment(lightness, ab, labels, {1: target.lab})
    assert torch.equal(from_list(lightness, ab, labels), from_dict(lightness, ab, labels))
    assert torch.equal(from_list(lightness, ab, labels), from_lab(lightness, ab, labels))
    assert from_dict.skipped == ((5, "no pixels at the plan's resolution"),)
    assert [i.label for i in from_dict.instances] == [1]
    other = labels.clone()
    other[other == 2] = 9  # a label the plan never saw: untouched
    assert torch.equal(from_list(lightness, ab, other)[:, other == 9], ab[:, other == 9])
    empty = plan_alignment(lightness, ab, labels, [None, None])
    assert empty(lightness, ab, labels) is ab


def test_bad_plans_and_hooks_name_the_argument():
    lightness, ab, labels, _ = shaded_instance(seed=9)
    with pytest.raises(TypeError, match=r"targets\[1\]='red'"):
        plan_alignment(lightness, ab, labels, ["red"])
    with pytest.raises(ValueError, match=r"targets\[1\]=\(120.0, 0.0, 0.0\)"):
        plan_alignment(lightness, ab, labels, [(120.0, 0.0, 0.0)])
    with pytest.raises(ValueError, match="one resolution"):
        plan_alignment(lightness, ab, labels[:10], [None])
    with pytest.raises(TypeError, match="integer"):
        plan_alignment(lightness, ab, labels.float(), [None])
    plan = plan_alignment(lightness, ab, labels, [parse_color("teal")])
    batch_l, batch_ab = lightness[None], ab[None]
    with pytest.raises(ValueError, match="label_map has shape None"):
        recombine_luminance(batch_l, batch_ab, adjust=plan)
    with pytest.raises(ValueError, match="adjust has 2 entries but there are 1 images"):
        recombine_luminance(batch_l, batch_ab, label_map=labels[None], adjust=[plan, plan])
    with pytest.raises(TypeError, match="not callable"):
        recombine_luminance(batch_l, batch_ab, label_map=labels[None], adjust=["plan"])
    with pytest.raises(ValueError, match="must return that shape"):
        recombine_luminance(batch_l, batch_ab, label_map=labels[None], adjust=lambda lt, a, lb: a[:1])
    assert torch.equal(
        recombine_luminance(batch_l, batch_ab, adjust=[None]), recombine_luminance(batch_l, batch_ab)
    )


def test_gamut_factor_matches_the_shared_gamut_fit():
    target = parse_color("#00ff00")
    levels = torch.tensor([10.0, 50.0, 88.0, 99.0])
    fitted = fit_chroma_to_gamut(levels.view(1, 4, 1), torch.tensor(target.ab).view(2, 1, 1).expand(2, 4, 1))
    assert torch.allclose(
        gamut_factor(target.ab, levels) * math.hypot(*target.ab), fitted.norm(dim=0).flatten()
    )
    rgb = lab_to_rgb(torch.cat([levels.view(1, 4, 1), fitted]).unsqueeze(0))
    assert torch.allclose(rgb_to_lab(rgb)[0, 0].flatten(), levels, atol=0.05)


def polygon(shape, points) -> torch.Tensor:
    import PIL.Image
    import PIL.ImageDraw

    canvas = PIL.Image.new("L", (shape[1], shape[0]), 0)
    PIL.ImageDraw.Draw(canvas).polygon(points, fill=1)
    return torch.from_numpy(np.asarray(canvas).astype(bool))


def test_a_real_photo_suit_changes_colour_while_the_face_and_hair_keep_theirs():
    skimage_data = pytest.importorskip("skimage.data")
    rgb = torch.from_numpy(skimage_data.astronaut()).permute(2, 0, 1).float()[None] / 255
    lab = rgb_to_lab(rgb)
    person = polygon(
        rgb.shape[-2:],
        [(150, 60), (172, 22), (262, 14), (300, 55), (302, 150), (308, 200), (352, 270), (362, 340), (300, 355),
         (280, 420), (272, 512), (24, 512), (20, 425), (22, 350), (35, 300), (50, 275), (75, 250), (100, 225),
         (118, 200), (150, 160)],
    )  # fmt: skip
    face = polygon(rgb.shape[-2:], [(185, 80), (260, 80), (262, 150), (225, 175), (190, 150)])
    labels = person.long()
    small = (128, 128)  # plan on a working-resolution copy, apply at 512 x 512
    small_lab = torch.nn.functional.interpolate(lab, size=small, mode="area")
    small_labels = labels[::4, ::4]
    target = parse_color("#2a5bd0")
    plan = plan_alignment(small_lab[0, :1], small_lab[0, 1:], small_labels, [target])
    assert plan.instances[0].mode.ab[1] > 30  # the orange suit, not the neutral collar or the skin
    before = recombine_luminance(lab[:, :1], small_lab[:, 1:])
    after = recombine_luminance(lab[:, :1], small_lab[:, 1:], label_map=labels[None], adjust=plan)
    (error,) = instance_color_errors(after, labels[None], [[target]])
    assert error.delta_e00 <= 2.0
    moved = (rgb_to_lab(after) - rgb_to_lab(before))[0, 1:].norm(dim=0)
    assert float(moved[face].median()) < 0.5 and float(moved[face].quantile(0.9)) < 3.0  # the face is kept
    assert float(moved[~person].max()) == 0.0
