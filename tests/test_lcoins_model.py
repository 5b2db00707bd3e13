"""LCoInsModel and its blocks against direct transcriptions of LC eq. 3-12."""

import math

import pytest
import torch
import torch.nn.functional as F

from mtcolor.models.lcoins import LCOINS_PRESETS, LCoInsModel
from mtcolor.models.lcoins_blocks import (
    GroupingAttention,
    GroupingBlock,
    GroupingLayer,
    JointAttention,
    Upsampler,
    straight_through_argmax,
)

N_I, N_L, N_G, C, H = 6, 5, 3, 8, 2


def tiny_model(**overrides) -> LCoInsModel:
    torch.manual_seed(0)
    return LCoInsModel(**{**LCOINS_PRESETS["tiny"], **overrides}).eval()


def random_inputs(batch=2, text=5, seed=1, dim=32):
    g = torch.Generator().manual_seed(seed)
    lightness = torch.rand(batch, 1, 32, 32, generator=g) * 100
    hidden = torch.randn(batch, text, dim, generator=g)
    mask = torch.ones(batch, text, dtype=torch.bool)
    mask[0, -2:] = False
    return lightness, hidden, mask


def attention(q, k, v, key_mask=None):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
    return scores.softmax(-1) @ v


def grouping_attention_reference(module: GroupingAttention, x, n_i, n_l, text_mask):
    """LC eq. 6-9 written head by head with explicit softmax matrices."""
    q, k, v = module.to_qkv(x).chunk(3, dim=-1)
    d = module.head_dim
    img, lag, grp = slice(0, n_i), slice(n_i, n_i + n_l), slice(n_i + n_l, x.shape[1])
    rows = {"img": [], "lag": [], "grp": []}
    for h in range(module.num_heads):
        qh, kh, vh = (t[..., h * d : (h + 1) * d] for t in (q, k, v))
        rows["img"] += [
            attention(qh[:, img], kh[:, img], vh[:, img]),
            attention(qh[:, img], kh[:, grp], vh[:, grp]),
        ]
        rows["lag"] += [
            attention(qh[:, lag], kh[:, lag], vh[:, lag], text_mask),
            attention(qh[:, lag], kh[:, grp], vh[:, grp]),
        ]
        rows["grp"] += [
            attention(qh[:, grp], kh[:, img], vh[:, img]),
            attention(qh[:, grp], kh[:, lag], vh[:, lag], text_mask),
        ]
    concat = torch.cat([torch.cat(rows[m], dim=-1) for m in ("img", "lag", "grp")], dim=1)  # eq. 9
    return concat @ module.proj.weight.T + module.proj.bias


def test_grouping_attention_matches_transcription_of_eq_6_to_9():
    torch.manual_seed(0)
    module = GroupingAttention(C, H)
    x = torch.randn(2, N_I + N_L + N_G, C)
    mask = torch.ones(2, N_L, dtype=torch.bool)
    mask[1, 3:] = False
    expected = grouping_attention_reference(module, x, N_I, N_L, mask)
    torch.testing.assert_close(module(x, N_I, N_L, mask), expected, atol=1e-5, rtol=1e-5)


def test_padded_language_tokens_are_never_attended():
    torch.manual_seed(0)
    module = GroupingAttention(C, H)
    x = torch.randn(1, N_I + N_L + N_G, C)
    mask = torch.tensor([[True, True, True, False, False]])
    y = x.clone()
    y[:, N_I + 3 : N_I + N_L] += 5.0  # change only the padded language tokens
    keep = [*range(N_I + 3), *range(N_I + N_L, N_I + N_L + N_G)]
    torch.testing.assert_close(module(x, N_I, N_L, mask)[:, keep], module(y, N_I, N_L, mask)[:, keep])


def _jacobian_block(fn, x, rows, cols):
    x = x.clone().requires_grad_(True)
    out = fn(x)[:, rows].sum()
    (grad,) = torch.autograd.grad(out, x)
    return grad[:, cols].abs().sum().item()


def test_one_grouping_attention_keeps_image_and_language_apart():
    torch.manual_seed(0)
    module = GroupingAttention(C, H)
    x = torch.randn(1, N_I + N_L + N_G, C)
    img, lag, grp = slice(0, N_I), slice(N_I, N_I + N_L), slice(N_I + N_L, None)

    def fn(t):
        return module(t, N_I, N_L)

    assert _jacobian_block(fn, x, img, lag) == 0.0
    assert _jacobian_block(fn, x, lag, img) == 0.0
    assert _jacobian_block(fn, x, grp, img) > 0 and _jacobian_block(fn, x, grp, lag) > 0
    assert _jacobian_block(fn, x, img, grp) > 0 and _jacobian_block(fn, x, lag, grp) > 0
    joint = JointAttention(C, H)
    assert _jacobian_block(lambda t: joint(t, N_I, N_L), x, img, lag) > 0


def _zero_group_values(model):
    """Forward hooks that zero the group tokens' values (V) in every attention layer."""

    def hook(module, inputs, output):
        tokens = output.shape[1]
        start = tokens - model.config.num_group_tokens
        output = output.clone()
        output[:, start:, 2 * model.config.hidden_size :] = 0
        return output

    return [block.attn.to_qkv.register_forward_hook(hook) for block in model.blocks]


@pytest.mark.parametrize("grouping", [True, False])
def test_group_tokens_are_the_only_path_from_language_to_image(grouping):
    model = tiny_model(use_grouping_attention=grouping)
    lightness, hidden, mask = random_inputs()
    other = hidden + torch.randn_like(hidden)
    base = model(lightness, hidden, mask).ab
    assert not torch.allclose(base, model(lightness, other, mask).ab)  # the caption matters
    handles = _zero_group_values(model)
    try:
        cut = model(lightness, hidden, mask).ab
        cut_other = model(lightness, other, mask).ab
    finally:
        for handle in handles:
            handle.remove()
    if grouping:  # LC section 3.4: image outputs do not depend on the language tokens
        torch.testing.assert_close(cut, cut_other)
    else:  # plain ViT blocks (w/o GA) mix image and language directly
        assert not torch.allclose(cut, cut_other)


def test_modal_type_embeddings_eq_3():
    model = tiny_model()
    lightness, hidden, mask = random_inputs()
    seen = {}
    handle = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.update(z1=args[0]))
    model(lightness, hidden, mask)
    handle.remove()
    types = model.type_embedding.weight
    t_img = model.encode_image(lightness)
    t_lag = model.text_proj(hidden)
    t_grp = model.group_tokens.expand(2, -1, -1)
    expected = torch.cat([t_img + types[0], t_lag + types[1], t_grp + types[2]], dim=1)
    torch.testing.assert_close(seen["z1"], expected)


def test_image_tokens_come_from_the_vit_over_the_gray_image_repeated_to_3_channels():
    model = tiny_model()
    lightness, _, _ = random_inputs()
    pixels = (lightness / 50 - 1).repeat(1, 3, 1, 1)
    expected = model.vit(pixel_values=pixels).last_hidden_state[:, 1:]
    torch.testing.assert_close(model.encode_image(lightness), expected)
    assert expected.shape == (2, (32 // 8) ** 2, 32)


def test_grouping_block_eq_4_5():
    torch.manual_seed(0)
    block = GroupingBlock(C, H)
    x = torch.randn(2, N_I + N_L + N_G, C)
    z_hat = block.attn(block.norm1(x), N_I, N_L) + x
    expected = block.mlp(block.norm2(z_hat)) + z_hat
    torch.testing.assert_close(block(x, N_I, N_L), expected)


def test_upsampler_eq_10_reshapes_row_major_and_doubles_log2_p_times():
    torch.manual_seed(0)
    up = Upsampler(C, patch_size=4, channels=(6, 4))
    tokens = torch.randn(2, 3 * 5, C)
    out = up(tokens, (3, 5))
    assert out.shape == (2, 2, 12, 20)
    spatial = torch.stack([torch.stack([tokens[:, r * 5 + c] for c in range(5)], -1) for r in range(3)], -2)
    torch.testing.assert_close(out, up.to_ab(up.up(spatial)))
    with pytest.raises(ValueError, match="patch_size=6"):
        Upsampler(C, patch_size=6)
    with pytest.raises(ValueError, match="upsampler_channels"):
        Upsampler(C, patch_size=4, channels=(8,))


def test_straight_through_argmax_is_one_hot_forward_and_soft_backward():
    torch.manual_seed(0)
    scores = torch.randn(2, 4, 7).softmax(dim=1).requires_grad_(True)
    hard = straight_through_argmax(scores, dim=1)
    expected = F.one_hot(scores.argmax(1), 4).permute(0, 2, 1).float()
    torch.testing.assert_close(hard, expected, atol=1e-6, rtol=0)
    weights = torch.randn(2, 4, 7)
    (grad_hard,) = torch.autograd.grad((hard * weights).sum(), scores)
    assert torch.equal(grad_hard, weights)  # d/dA of (onehot + A - sg(A)) is the identity


def test_grouping_layer_eq_11_12():
    torch.manual_seed(0)
    layer = GroupingLayer(C)
    groups, image = torch.randn(2, N_G, C), torch.randn(2, 10, C)
    merged, hard, soft = layer(groups, image)
    soft_ref = (groups @ image.transpose(1, 2) / math.sqrt(C)).softmax(dim=1)
    torch.testing.assert_close(soft, soft_ref)
    expected = groups.clone()
    values = image @ layer.to_value.weight.T  # W_v Z_img
    for b in range(2):
        winners = soft_ref[b].argmax(0)
        for i in range(N_G):
            members = (winners == i).nonzero().flatten()
            if len(members):
                expected[b, i] = groups[b, i] + values[b, members].sum(0) / len(members)
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)
    assert torch.allclose(hard.sum(1), torch.ones(2, 10))


def grouping_layer_reference(layer: GroupingLayer, groups, image):
    """LC eq. 11-12 transcribed group by group. An empty group (0 / 0 in eq. 12) keeps Z_grp[i]."""
    soft = (groups @ image.transpose(1, 2) / math.sqrt(groups.shape[-1])).softmax(dim=1)  # A_bar
    one_hot = F.one_hot(soft.argmax(dim=1), groups.shape[1]).transpose(1, 2).to(soft.dtype)
    a_hat = one_hot + soft - soft.detach()  # eq. 11
    values = image @ layer.to_value.weight.T  # W_v Z_img
    rows = []
    for b in range(groups.shape[0]):
        for i in range(groups.shape[1]):
            numerator = a_hat[b, i] @ values[b]  # sum_j A_hat[i, j] W_v Z_img[j]
            denominator = a_hat[b, i].sum() if one_hot[b, i].sum() > 0 else 1.0  # sum_j A_hat[i, j]
            rows.append(groups[b, i] + numerator / denominator)  # eq. 12
    return torch.stack(rows).view_as(groups)


def test_grouping_layer_gradient_equals_eq_11_12_with_single_token_groups():
    """Groups holding exactly one image token keep their straight-through gradient through the
    denominator of eq. 12 (a clamp_min(1) on it has zero gradient at 1); empty groups too."""
    torch.manual_seed(0)
    layer = GroupingLayer(C).double()
    centres = torch.eye(C, dtype=torch.float64)[:4] * 4  # 4 well separated group directions
    owner = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 2, 1], [1, 1, 3, 1, 1, 1, 1, 1, 1]])  # winners
    image = centres[owner] + 0.3 * torch.randn(2, 9, C, dtype=torch.float64)
    groups = centres + 0.3 * torch.randn(2, 4, C, dtype=torch.float64)
    weights = torch.randn(2, 4, C, dtype=torch.float64)

    def grads(fn):
        leaves = [groups.clone().requires_grad_(True), image.clone().requires_grad_(True)]
        layer.zero_grad()
        out = fn(*leaves)
        (out * weights).sum().backward()
        return out, [leaf.grad for leaf in leaves] + [layer.to_value.weight.grad.clone()]

    out, got = grads(lambda g, x: layer(g, x)[0])
    hard = layer(groups, image)[1].detach()
    counts = hard.sum(-1).round()
    assert counts.tolist() == [[1, 7, 1, 0], [0, 8, 0, 1]]  # single-token and empty groups present
    expected_out, expected = grads(lambda g, x: grouping_layer_reference(layer, g, x))
    torch.testing.assert_close(out, expected_out, atol=1e-12, rtol=1e-12)
    for name, g, e in zip(("group_tokens", "image_tokens", "W_v"), got, expected):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10, msg=f"gradient of {name}")


def test_grouping_layer_gradient_reaches_the_similarity():
    torch.manual_seed(0)
    layer = GroupingLayer(C)
    groups = torch.randn(1, N_G, C, requires_grad=True)
    image = torch.randn(1, 10, C)
    merged, _, _ = layer(groups, image)
    (merged - groups).pow(2).sum().backward()  # only through A_hat's straight-through path
    assert groups.grad.abs().sum() > 0


def test_forward_shapes_and_counter_pass_leaves_the_true_pass_unchanged():
    model = tiny_model()
    lightness, hidden, mask = random_inputs()
    out = model(lightness, hidden, mask)
    assert out.ab.shape == (2, 2, 32, 32)
    assert out.assignment.shape == (2, 4, 16)
    assert out.text_embeds.shape == (2, 5, 16) and out.group_embeds.shape == (2, 4, 16)
    counter = torch.randn(2, 8, 32)
    both = model(lightness, hidden, mask, counter_hidden_states=counter)
    for name in ("ab", "image_tokens", "text_embeds", "group_embeds"):
        torch.testing.assert_close(getattr(both, name), getattr(out, name), atol=1e-5, rtol=1e-5)
    assert both.counter_text_embeds.shape == (2, 8, 16)
    alone = model(lightness, counter)
    torch.testing.assert_close(both.counter_group_embeds, alone.group_embeds, atol=1e-5, rtol=1e-5)
    assert isinstance(model(lightness, hidden, mask, return_dict=False), tuple)


def test_ablation_configurations():
    no_ge = tiny_model(use_group_tokens=False, use_grouping_attention=False)
    lightness, hidden, mask = random_inputs()
    out = no_ge(lightness, hidden, mask)
    assert out.group_tokens is None and out.assignment is None
    assert out.group_embeds.shape == (2, 16, 16)  # counter-colour loss against image tokens
    assert not hasattr(no_ge, "group_tokens")
    no_ga = tiny_model(use_grouping_attention=False)
    assert all(isinstance(b.attn, JointAttention) for b in no_ga.blocks)
    with pytest.raises(ValueError, match="use_grouping_attention"):
        LCoInsModel(**{**LCOINS_PRESETS["tiny"], "use_group_tokens": False})


def test_bad_inputs_name_the_argument():
    model = tiny_model()
    lightness, hidden, mask = random_inputs()
    with pytest.raises(ValueError, match="lightness"):
        model(lightness[..., :16, :16], hidden, mask)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model(lightness, hidden[..., :7], mask)
    with pytest.raises(ValueError, match="attention mask"):
        model(lightness, hidden, mask[:, :2])
    with pytest.raises(ValueError, match="image_size=30"):
        LCoInsModel(**{**LCOINS_PRESETS["tiny"], "image_size": 30})
