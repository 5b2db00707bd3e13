"""Label-masked attention kernels: every fast implementation against the dense reference and against
transcriptions of MT eq. 2 and 4-7 written independently here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtcolor.attention import LabelPartition, masked_attention

FAST_IMPLS = ("segments", "sdpa_mask", "auto")
MODES = ("renormalized", "paper")
TOL = {"atol": 1e-5, "rtol": 0.0}


def qkv(batch=2, heads=3, num_q=20, num_k=20, dim=8, dv=None, dtype=torch.float32, token_major=True, seed=0):
    """Random q, k, v; ``token_major`` gives the (B, N, H, d) memory layout diffusers processors pass."""
    gen = torch.Generator().manual_seed(seed)

    def make(tokens, width):
        if token_major:
            return torch.randn(batch, tokens, heads, width, generator=gen, dtype=dtype).transpose(1, 2)
        return torch.randn(batch, heads, tokens, width, generator=gen, dtype=dtype)

    return make(num_q, dim), make(num_k, dim), make(num_k, dv or dim)


def random_labels(batch, tokens, num_labels, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_labels, (batch, tokens), generator=gen)


def explicit_dense(q, k, v, q_labels, k_labels, mode):
    """Independent transcription. paper: (M o softmax(QK^T/sqrt d)) V (MT eq. 2); renormalized: the
    masked weights divided by their row sum (a row without any allowed key gives 0).

    Padding (negative label) keys are not tokens of the sample: they are removed from K and V before
    anything is computed (so they are absent from the paper-mode softmax), and no query matches them."""
    outs = []
    for b in range(q.shape[0]):
        real = k_labels[b] >= 0
        kb, vb, kl = k[b][:, real], v[b][:, real], k_labels[b][real]  # (H, Nk', d): the sample's keys
        probs = torch.softmax(q[b] @ kb.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (H, Nq, Nk')
        mask = (q_labels[b].unsqueeze(1) == kl.unsqueeze(0)).to(q.dtype)  # (Nq, Nk')
        weights = mask * probs
        if mode == "renormalized":
            total = weights.sum(-1, keepdim=True)
            weights = torch.where(total > 0, weights / total.clamp_min(1e-300), torch.zeros_like(weights))
        outs.append(weights @ vb)
    return torch.stack(outs)


def label_cases():
    """(name, q_labels, k_labels); "own_label" has more labels (16) than the head dim (8), so paper
    mode needs two one-hot chunks."""
    batch = 2
    return [
        ("random", random_labels(batch, 24, 4, 1), random_labels(batch, 24, 4, 2)),
        ("random_nq_ne_nk", random_labels(batch, 18, 5, 3), random_labels(batch, 31, 5, 4)),
        ("single_label", torch.full((batch, 16), 3), torch.full((batch, 16), 3)),
        ("own_label", torch.arange(16).repeat(batch, 1), torch.arange(16).repeat(batch, 1)),
        (
            "missing_label",
            torch.tensor([[0, 1, 7, 7, 1, 0, 2, 7, 0, 1], [7, 7, 7, 7, 7, 7, 7, 7, 7, 7]]),
            torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1], [0, 1, 2, 0, 1, 2, 0, 1]]),
        ),
        ("padding", *padded_labels()),
    ]


def padded_labels():
    """Labels 0-2 plus padding (-1): padding keys at the end (padded instance tokens) and one in
    the middle, a padding query in item 0, and item 1 with more padding than item 0."""
    q_labels = random_labels(2, 20, 3, 51)
    q_labels[0, 3] = -1
    k_labels = torch.cat([random_labels(2, 22, 3, 52), torch.tensor([[0, 1, -1, -1], [0, -1, -1, -1]])], 1)
    k_labels[1, 5] = -1
    return q_labels, k_labels


CASES = label_cases()
CASE_IDS = [case[0] for case in CASES]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reference_matches_explicit_transcription(case, mode):
    _, q_labels, k_labels = case
    q, k, v = qkv(num_q=q_labels.shape[1], num_k=k_labels.shape[1], dv=6)
    out = masked_attention(q, k, v, q_labels, k_labels, mode=mode, impl="reference")
    torch.testing.assert_close(out, explicit_dense(q, k, v, q_labels, k_labels, mode), **TOL)


@pytest.mark.parametrize("token_major", [True, False], ids=["token_major", "head_major"])
@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fast_impl_matches_reference(case, mode, impl, token_major):
    _, q_labels, k_labels = case
    q, k, v = qkv(num_q=q_labels.shape[1], num_k=k_labels.shape[1], dv=6, token_major=token_major)
    expected = masked_attention(q, k, v, q_labels, k_labels, mode=mode, impl="reference")
    out = masked_attention(q, k, v, q_labels, k_labels, mode=mode, impl=impl)
    assert out.shape == expected.shape == (2, 3, q_labels.shape[1], 6)
    assert out.dtype == q.dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, **TOL)


@pytest.mark.parametrize("impl", ("segments", "sdpa_mask", "reference"))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradients_match_explicit(case, mode, impl):
    """float64 so that the comparison measures the maths, not float32 summation order."""
    _, q_labels, k_labels = case
    inputs = qkv(num_q=q_labels.shape[1], num_k=k_labels.shape[1], dtype=torch.float64, seed=5)
    grad_out = torch.randn(
        2, 3, q_labels.shape[1], 8, dtype=torch.float64, generator=torch.Generator().manual_seed(9)
    )

    def grads(fn):
        leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
        (fn(*leaves) * grad_out).sum().backward()
        return [leaf.grad for leaf in leaves]

    expected = grads(lambda q, k, v: explicit_dense(q, k, v, q_labels, k_labels, mode))
    got = grads(lambda q, k, v: masked_attention(q, k, v, q_labels, k_labels, mode=mode, impl=impl))
    for name, g, e in zip("qkv", got, expected):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-8, msg=f"grad of {name}")


@pytest.mark.parametrize("impl", ("segments", "sdpa_mask", "reference"))
@pytest.mark.parametrize("mode", MODES)
def test_missing_label_rows_are_zero_with_zero_gradients(mode, impl):
    q_labels = torch.tensor([[0, 5, 1, 5]])
    k_labels = torch.tensor([[0, 1, 1, 0, 2]])
    q, k, v = (x.requires_grad_(True) for x in qkv(batch=1, num_q=4, num_k=5))
    out = masked_attention(q, k, v, q_labels, k_labels, mode=mode, impl=impl)
    assert torch.equal(out[:, :, [1, 3]], torch.zeros_like(out[:, :, [1, 3]]))
    out.sum().backward()
    assert torch.equal(q.grad[:, :, [1, 3]], torch.zeros_like(q.grad[:, :, [1, 3]]))
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


@pytest.mark.parametrize("impl", FAST_IMPLS + ("reference",))
@pytest.mark.parametrize("mode", MODES)
def test_single_label_equals_unmasked_sdpa(mode, impl):
    q, k, v = qkv(num_q=12, num_k=17)
    ones_q, ones_k = torch.ones(2, 12, dtype=torch.long), torch.ones(2, 17, dtype=torch.long)
    out = masked_attention(q, k, v, ones_q, ones_k, mode=mode, impl=impl)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **TOL)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_own_label_each_query_copies_its_value(impl):
    q, k, v = qkv(num_q=10, num_k=10)
    labels = torch.arange(10).repeat(2, 1)
    out = masked_attention(q, k, v, labels, labels, impl=impl)
    torch.testing.assert_close(out, v, **TOL)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_custom_scale(impl):
    q, k, v = qkv()
    q_labels, k_labels = random_labels(2, 20, 3, 7), random_labels(2, 20, 3, 8)
    for mode in MODES:
        expected = explicit_dense(q * 0.3 * math.sqrt(8), k, v, q_labels, k_labels, mode)
        out = masked_attention(q, k, v, q_labels, k_labels, mode=mode, impl=impl, scale=0.3)
        torch.testing.assert_close(out, expected, **TOL)


@pytest.mark.parametrize("impl", ("segments", "sdpa_mask"))
def test_locality_other_labels_do_not_leak(impl):
    """Renormalized mode: keys/values of label-B tokens cannot change outputs of label-A queries."""
    q_labels, k_labels = random_labels(2, 30, 3, 11), random_labels(2, 30, 3, 12)
    q, k, v = qkv(num_q=30, num_k=30)
    k2, v2 = k.clone(), v.clone()
    other = (k_labels != 0).unsqueeze(1).unsqueeze(-1)
    k2 = torch.where(other, torch.randn_like(k2) * 5, k2)
    v2 = torch.where(other, torch.randn_like(v2) * 5, v2)
    rows = (q_labels == 0).unsqueeze(1).unsqueeze(-1).expand_as(q)
    before = masked_attention(q, k, v, q_labels, k_labels, impl=impl)
    after = masked_attention(q, k2, v2, q_labels, k_labels, impl=impl)
    torch.testing.assert_close(after[rows], before[rows], atol=1e-6, rtol=0.0)
    assert not torch.allclose(after[~rows], before[~rows])


def test_partition_reused_across_inputs_and_head_counts():
    q_labels, k_labels = random_labels(2, 25, 4, 21), random_labels(2, 19, 4, 22)
    partition = LabelPartition.build(q_labels, k_labels)
    for seed, heads in ((0, 3), (1, 5)):
        q, k, v = qkv(heads=heads, num_q=25, num_k=19, seed=seed)
        for mode in MODES:
            expected = explicit_dense(q, k, v, q_labels, k_labels, mode)
            out = masked_attention(q, k, v, q_labels, k_labels, mode=mode, partition=partition)
            torch.testing.assert_close(out, expected, **TOL)


def test_partition_shape_mismatch_is_reported():
    partition = LabelPartition.build(random_labels(2, 10, 3, 0), random_labels(2, 10, 3, 1))
    q, k, v = qkv(num_q=12, num_k=10)
    with pytest.raises(ValueError, match="partition was built for"):
        masked_attention(q, k, v, random_labels(2, 12, 3, 0), random_labels(2, 10, 3, 1), partition=partition)


def test_partition_segments_cover_tokens_once():
    q_labels = torch.tensor([[2, 0, 2, 9], [1, 1, 1, 1]])
    k_labels = torch.tensor([[0, 0, 9], [1, 4, 4]])
    partition = LabelPartition.build(q_labels, k_labels)
    assert torch.equal(partition.labels, torch.tensor([0, 1, 2, 4, 9]))
    assert torch.equal(partition.q_order[partition.q_inverse], torch.arange(8))
    assert torch.equal(partition.k_order[partition.k_inverse], torch.arange(6))
    # groups (b, label) b-major over labels [0, 1, 2, 4, 9]
    assert partition.q_sizes == (1, 0, 2, 0, 1) + (0, 4, 0, 0, 0)
    assert partition.k_sizes == (2, 0, 0, 0, 1) + (0, 1, 0, 2, 0)
    assert partition.q_order.tolist() == [1, 0, 2, 3, 4, 5, 6, 7]
    assert partition.k_order.tolist() == [0, 1, 2, 3, 4, 5]


def instance_dense(q_lat, k_lat, v_lat, masks, q_inst, k_inst, v_inst, mode):
    """MT eq. 4-7 with explicit (lx + n) x (lx + n) matrices.

    ``masks``: (B, n, lx) binary instance masks, non-overlapping; instance token j (j = 0..n-1)
    belongs to mask j. Background pixels (in no mask) form one more region paired with a null token,
    which the caller passes as instance 0 with mask = not(union) (docs/design.md, "Label maps")."""
    lx = q_lat.shape[2]
    n = q_inst.shape[2]
    q_p = torch.cat([q_lat, q_inst], dim=2)
    k_p = torch.cat([k_lat, k_inst], dim=2)
    v_p = torch.cat([v_lat, v_inst], dim=2)
    self_map = torch.softmax(q_p @ k_p.transpose(-1, -2) / math.sqrt(q_p.shape[-1]), dim=-1)  # eq. 4
    m = masks.to(q_lat.dtype)
    m_self = (m.unsqueeze(3) * m.unsqueeze(2)).amax(dim=1)  # eq. 5: exists k with m_k(i) = m_k(j) = 1
    m_cross = m.transpose(1, 2)  # eq. 6: M_cross(i, j) = m_j(i)
    mask = torch.zeros(masks.shape[0], lx + n, lx + n, dtype=q_lat.dtype)
    mask[:, :lx, :lx] = m_self
    mask[:, :lx, lx:] = m_cross
    weights = mask.unsqueeze(1) * self_map
    if mode == "renormalized":
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-300)
    return (weights @ v_p)[:, :, :lx]  # eq. 7: latent rows only


def instance_branch_attention(q_lat, k_lat, v_lat, lat_labels, k_inst, v_inst, inst_labels, **kwargs):
    """The instance branch's kernel call (``InstanceBranch.forward``): latent queries, keys and values
    ``[latent; instance tokens]``, key labels ``[latent labels; instance labels]``."""
    inst_labels = inst_labels.expand(lat_labels.shape[0], -1)
    k_labels = torch.cat([lat_labels, inst_labels], dim=1)
    k, v = torch.cat([k_lat, k_inst], dim=2), torch.cat([v_lat, v_inst], dim=2)
    return masked_attention(q_lat, k, v, lat_labels, k_labels, **kwargs), k_labels


@pytest.mark.parametrize("impl", FAST_IMPLS + ("reference",))
@pytest.mark.parametrize("mode", MODES)
def test_instance_branch_keys_match_eq_4_to_7(mode, impl):
    batch, heads, lx, n_inst, dim = 2, 2, 36, 3, 8
    lat_labels = random_labels(batch, lx, n_inst + 1, 31)  # 0 = background, 1..3 = instances
    lat_labels[:, 0] = 0  # every region non-empty in both items
    lat_labels[:, 1:4] = torch.tensor([1, 2, 3])
    inst_labels = torch.arange(n_inst + 1)  # token 0 = learned null token (background)
    q_lat, k_lat, v_lat = qkv(batch, heads, lx, lx, dim, seed=1)
    q_inst, k_inst, v_inst = qkv(batch, heads, n_inst + 1, n_inst + 1, dim, seed=2)
    masks = torch.stack([lat_labels == j for j in range(n_inst + 1)], dim=1)  # (B, n + 1, lx)
    expected = instance_dense(q_lat, k_lat, v_lat, masks, q_inst, k_inst, v_inst, mode)
    args = (q_lat, k_lat, v_lat, lat_labels, k_inst, v_inst, inst_labels)
    out, k_labels = instance_branch_attention(*args, mode=mode, impl=impl)
    torch.testing.assert_close(out, expected, **TOL)
    partition = LabelPartition.build(lat_labels, k_labels)
    out, _ = instance_branch_attention(*args, mode=mode, impl=impl, partition=partition)
    torch.testing.assert_close(out, expected, **TOL)


def test_paper_mode_rows_shrink_by_own_label_mass():
    """paper = renormalized * mass with mass in [0, 1]; with one label mass is 1."""
    q, k, v = qkv()
    q_labels, k_labels = random_labels(2, 20, 3, 41), random_labels(2, 20, 3, 42)
    renorm = masked_attention(q, k, v, q_labels, k_labels)
    paper = masked_attention(q, k, v, q_labels, k_labels, mode="paper")
    ratio = paper.norm(dim=-1) / renorm.norm(dim=-1)
    assert (ratio > 0).all() and (ratio < 1).all()


@pytest.mark.parametrize("impl", FAST_IMPLS + ("reference",))
@pytest.mark.parametrize("mode", MODES)
def test_padding_keys_change_nothing(mode, impl):
    """Appending padding keys (label -1, large random keys and values, as padded instance tokens
    become after the projection + LayerNorm) leaves every output unchanged, in both modes: a sample's
    result does not depend on how many instances the other samples of its batch have."""
    q_labels, k_labels = random_labels(2, 20, 3, 61), random_labels(2, 20, 3, 62)
    q, k, v = qkv(num_q=20, num_k=20, dtype=torch.float64)
    k_pad, v_pad = (torch.randn(2, 3, 4, 8, dtype=torch.float64) * 10 for _ in range(2))
    labels_pad = torch.cat([k_labels, torch.full((2, 4), -1)], 1)
    before = masked_attention(q, k, v, q_labels, k_labels, mode=mode, impl=impl)
    after = masked_attention(
        q, torch.cat([k, k_pad], 2), torch.cat([v, v_pad], 2), q_labels, labels_pad, mode=mode, impl=impl
    )
    torch.testing.assert_close(after, before, atol=1e-12, rtol=0.0)
    lat_labels = q_labels
    inst = torch.tensor([0, 1, 2])
    inst_padded = torch.tensor([[0, 1, 2, -1, -1], [0, 1, 2, -1, -1]])
    k_inst, v_inst = (torch.randn(2, 3, 5, 8, dtype=torch.float64) for _ in range(2))
    short, _ = instance_branch_attention(
        q, k, v, lat_labels, k_inst[:, :, :3], v_inst[:, :, :3], inst, mode=mode, impl=impl
    )
    padded, _ = instance_branch_attention(
        q, k, v, lat_labels, k_inst, v_inst, inst_padded, mode=mode, impl=impl
    )
    torch.testing.assert_close(padded, short, atol=1e-12, rtol=0.0)


def error_cases():
    q, k, v = qkv(num_q=6, num_k=5)
    ql, kl = random_labels(2, 6, 2, 0), random_labels(2, 5, 2, 1)
    return [
        ("q must be a 4-D tensor", (q[0], k, v, ql, kl), {}),
        ("v must be a 4-D tensor", (q, k, v[..., 0], ql, kl), {}),
        ("k's head dim must equal q's", (q, k[..., :4], v, ql, kl), {}),
        ("share batch size", (q, k[:1], v[:1], ql, kl), {}),
        ("v must have as many tokens as k", (q, k, v[:, :, :4], ql, kl), {}),
        (r"q_labels must have shape \(B, Nq\) = \(2, 6\)", (q, k, v, ql[:, :5], kl), {}),
        (r"k_labels must have shape \(B, Nk\) = \(2, 5\)", (q, k, v, ql, kl[:1]), {}),
        ("q_labels must be 2-D", (q, k, v, ql.reshape(2, 2, 3), kl), {}),
        ("q_labels must hold integer labels", (q, k, v, ql.float(), kl), {}),
        ("k_labels must hold integer labels", (q, k, v, ql, kl.bool()), {}),
        ("mode must be one of", (q, k, v, ql, kl), {"mode": "masked"}),
        ("impl must be one of", (q, k, v, ql, kl), {"impl": "flash"}),
    ]


@pytest.mark.parametrize("message, args, kwargs", error_cases(), ids=[c[0][:30] for c in error_cases()])
def test_errors_name_the_argument(message, args, kwargs):
    with pytest.raises(ValueError, match=message):
        masked_attention(*args, **kwargs)
