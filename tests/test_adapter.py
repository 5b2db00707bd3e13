import copy

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from mtcolor.attention.processors import (
    InstanceSelfAttnProcessor2_0,
    MTColorContext,
    PixelMaskAttnProcessor2_0,
)
from mtcolor.conditioning import encode_instance_texts, encode_texts
from mtcolor.denoise import predict_noise
from mtcolor.models.adapter import MTColorAdapter
from mtcolor.models.branches import InstanceBranch, PixelMaskAttention
from mtcolor.testing import randomize_adapter, tiny_components


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    return tiny_components(0, tokenizer_cache=str(tmp_path_factory.mktemp("tok")))


def _label_map(batch=2, size=64):
    label = torch.zeros(batch, size, size, dtype=torch.long)
    label[:, : size // 2, : size // 2] = 1  # instance A
    label[:, size // 2 + 8 :, size // 2 + 8 :] = 2  # instance B
    return label


def _inputs(c, texts=(("a red car", "a blue cat"), ("a red car", "a blue cat"))):
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 8, 8)
    hidden, _ = encode_texts(c["tokenizer"], c["text_encoder"], ["a street", "a street"])
    embeds, counts = encode_instance_texts(c["tokenizer"], c["text_encoder"], [list(t) for t in texts])
    gray = torch.rand(2, 3, 64, 64)
    return latents, torch.tensor([500, 500]), hidden, embeds, counts, gray


@torch.no_grad()
def test_fresh_adapter_leaves_unet_and_controlnet_unchanged(components):
    c = copy.deepcopy(components)
    latents, t, hidden, embeds, counts, gray = _inputs(c)
    stock = predict_noise(c["unet"], latents, t, hidden, controlnet=c["controlnet"], control_image=gray)
    c["adapter"].install(c["unet"])
    context = c["adapter"].build_context(_label_map(), embeds, counts, (8, 8))
    out = predict_noise(
        c["unet"], latents, t, hidden, context=context, controlnet=c["controlnet"], control_image=gray
    )
    assert (out - stock).abs().max() < 1e-5
    for mode in ("paper", "renormalized"):
        context = c["adapter"].build_context(_label_map(), embeds, counts, (8, 8), mode=mode)
        out = predict_noise(
            c["unet"], latents, t, hidden, context=context, controlnet=c["controlnet"], control_image=gray
        )
        assert (out - stock).abs().max() < 1e-5
    randomize_adapter(c["adapter"])
    out = predict_noise(
        c["unet"], latents, t, hidden, context=context, controlnet=c["controlnet"], control_image=gray
    )
    assert (out - stock).abs().max() > 1e-2  # the test can fail: a trained adapter does change it


def test_install_keeps_unet_state_dict_stock_and_wraps_the_current_processors(components):
    c = copy.deepcopy(components)
    keys = set(c["unet"].state_dict())
    c["adapter"].install(c["unet"])
    assert set(c["unet"].state_dict()) == keys
    assert c["adapter"].is_installed(c["unet"])
    kinds = {type(p) for p in c["unet"].attn_processors.values()}
    assert kinds == {InstanceSelfAttnProcessor2_0, PixelMaskAttnProcessor2_0}
    c["unet"].set_attn_processor(AttnProcessor())  # a user replaces them ...
    assert not c["adapter"].is_installed(c["unet"])
    c["adapter"].ensure_installed(c["unet"])  # ... and MT-Color is put back on top
    assert c["adapter"].is_installed(c["unet"])
    assert all(isinstance(p.base, AttnProcessor) for p in c["unet"].attn_processors.values())


def test_adapter_for_another_unet_is_rejected(components):
    other = MTColorAdapter(
        block_names=["nope"], block_dims=[32], block_heads=[4], text_embed_dim=32, instance_dim=32
    )
    with pytest.raises(ValueError, match="another UNet architecture"):
        other.install(copy.deepcopy(components["unet"]))


def test_instance_encoder_is_eq3(components):
    adapter = copy.deepcopy(components["adapter"])
    randomize_adapter(adapter, seed=3)
    label = _label_map(batch=1)
    embeds = torch.randn(1, 2, 32)
    tokens, labels = adapter.encode_instances(label, embeds, torch.tensor([2]))
    assert labels.tolist() == [[0, 1, 2]]
    enc = adapter.instance_encoder
    for k in (1, 2):
        mask = torch.nn.functional.interpolate((label == k).float()[None], size=(16, 16), mode="area")[0]
        h = torch.nn.functional.silu(enc.mask_encoder.conv1(mask[None]))
        h = torch.nn.functional.silu(enc.mask_encoder.conv2(h))
        h = torch.nn.functional.silu(enc.mask_encoder.conv3(h))
        mlp1 = torch.nn.functional.adaptive_avg_pool2d(h, 4).flatten(1)
        expected = enc.mlp(torch.cat([embeds[:, k - 1], mlp1], dim=-1))  # MLP2(concat(CLIP(T), MLP1(M)))
        assert torch.allclose(tokens[:, k], expected, atol=1e-6)
    assert torch.equal(tokens[0, 0], adapter.null_token)
    _, labels = adapter.encode_instances(label, embeds, torch.tensor([1]))
    assert labels.tolist() == [[0, 1, -1]]  # padding never matches a pixel


def _dense_branch(branch, x, labels, tokens, token_labels, mode="paper"):
    """Direct transcription of MT eq. 4-7 with explicit (lx + n) x (lx + n) matrices, one sample at
    a time: ``p = [f_x; Gamma]`` holds the sample's own instance tokens only (padding, label -1, is
    not a token of the sample). ``mode="renormalized"`` divides each masked row by its sum."""
    heads, lx, C = branch.heads, x.shape[1], x.shape[2]
    outs = []
    for b in range(x.shape[0]):
        real = token_labels[b] >= 0
        gamma = branch.instance_norm(branch.instance_proj(tokens[b, real]))
        p = torch.cat([x[b], gamma], 0)  # (lx + n, C)
        L = p.shape[0]
        q = branch.to_q(p).view(L, heads, -1).transpose(0, 1)
        k = branch.to_k(p).view(L, heads, -1).transpose(0, 1)
        v = branch.to_v(p).view(L, heads, -1).transpose(0, 1)
        self_map = torch.softmax(q @ k.transpose(-1, -2) / (C // heads) ** 0.5, -1)  # eq. 4
        m_self = labels[b, :, None] == labels[b, None, :]  # eq. 5
        m_cross = labels[b, :, None] == token_labels[b, real][None, :]  # eq. 6
        mask = torch.cat([m_self, m_cross], 1)[None]  # rows: latent pixels
        weights = mask * self_map[:, :lx]  # eq. 7, latent rows
        if mode == "renormalized":
            weights = weights / weights.sum(-1, keepdim=True)
        out = weights @ v
        outs.append(out.transpose(0, 1).reshape(lx, C))
    return torch.tanh(branch.gate) * branch.to_out(torch.stack(outs))


@pytest.mark.parametrize("mode", ["renormalized", "paper"])
@torch.no_grad()
def test_sample_output_does_not_depend_on_the_padding_its_batch_adds(components, mode):
    """Sample A (one instance) run alone vs batched with sample B (three instances): A gets two
    padding instance tokens in the batch. Its noise prediction must not change (padding tokens are
    not tokens of A; MT eq. 4's softmax runs over A's own tokens only), in both modes."""
    c = copy.deepcopy(components)
    randomize_adapter(c["adapter"])
    c["adapter"].install(c["unet"])
    latents, t, hidden, _, _, gray = _inputs(c)
    label = torch.zeros(2, 64, 64, dtype=torch.long)
    label[0, 8:40, 8:40] = 1
    label[1, :20, :20], label[1, 30:, :30], label[1, 40:, 40:] = 1, 2, 3
    texts = [["a red car"], ["a blue cat", "a green tree", "a yellow sky"]]
    embeds, counts = encode_instance_texts(c["tokenizer"], c["text_encoder"], texts)
    alone_embeds, alone_counts = encode_instance_texts(c["tokenizer"], c["text_encoder"], texts[:1])

    def run(rows, label_map, embeds, counts):
        context = c["adapter"].build_context(label_map, embeds, counts, (8, 8), mode=mode)
        return predict_noise(
            c["unet"],
            latents[rows],
            t[rows],
            hidden[rows],
            context=context,
            controlnet=c["controlnet"],
            control_image=gray[rows],
        )

    batched = run(slice(0, 2), label, embeds, counts)
    alone = run(slice(0, 1), label[:1], alone_embeds, alone_counts)
    assert (batched[0] - alone[0]).abs().max() < 1e-4


def _attn(dim=16, heads=2):
    torch.manual_seed(1)
    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads, cross_attention_dim=None)


def test_instance_branch_processor_equals_eq4_to_7_paper_mode():
    torch.manual_seed(0)
    branch = InstanceBranch(16, 12, heads=2)
    with torch.no_grad():
        branch.gate.fill_(0.7)
    attn = _attn()
    x = torch.randn(2, 6 * 5, 16)
    label = torch.randint(0, 3, (2, 6, 5))
    tokens = torch.randn(2, 3, 12)
    token_labels = torch.tensor([[0, 1, 2], [0, 1, -1]])
    ctx = MTColorContext(label, (6, 5), tokens, token_labels, mode="paper")
    out = InstanceSelfAttnProcessor2_0(branch)(attn, x, mtcolor=ctx)
    expected = AttnProcessor2_0()(attn, x) + _dense_branch(branch, x, label.flatten(1), tokens, token_labels)
    assert (out - expected).abs().max() < 1e-5


@pytest.mark.parametrize("impl", ["segments", "sdpa_mask", "reference"])
@pytest.mark.parametrize("mode", ["renormalized", "paper"])
def test_instance_branch_equals_eq4_to_7(mode, impl):
    """``InstanceBranch.forward`` (the module every ``attn1`` processor runs) against the dense
    transcription, in both masking modes and with every kernel implementation."""
    torch.manual_seed(0)
    branch = InstanceBranch(16, 12, heads=2)
    with torch.no_grad():
        branch.gate.fill_(0.7)
    x = torch.randn(2, 30, 16)
    labels = torch.randint(0, 3, (2, 30))
    labels[:, :3] = torch.tensor([0, 1, 2])  # every label present in both samples
    tokens = torch.randn(2, 3, 12)
    token_labels = torch.tensor([[0, 1, 2], [0, 1, -1]])
    with torch.no_grad():
        out = branch(x, labels, tokens, token_labels, mode=mode, impl=impl)
        expected = _dense_branch(branch, x, labels, tokens, token_labels, mode)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0.0)


def test_pmam_processor_equals_eq1_2_paper_mode():
    torch.manual_seed(0)
    pmam = PixelMaskAttention(16, heads=2)
    with torch.no_grad():
        pmam.gate.fill_(0.5)
    attn = Attention(query_dim=16, heads=2, dim_head=8, cross_attention_dim=8)
    x, text = torch.randn(2, 20, 16), torch.randn(2, 7, 8)
    control = torch.randn(2, 20, 16)
    label = torch.randint(0, 3, (2, 4, 5))
    ctx = MTColorContext(label, (4, 5), mode="paper", control_features={(20, 16): control})
    out = PixelMaskAttnProcessor2_0(pmam)(attn, x, encoder_hidden_states=text, mtcolor=ctx)
    # eq. 2: M o Softmax(Q'K'^T / sqrt d) V' with Q' = W_Q f_x, K' = W_K f_x, V' = W_V f_y
    fy = pmam.control_norm(control)
    q = pmam.to_q(x).view(2, 20, 2, 8).transpose(1, 2)
    k = pmam.to_k(x).view(2, 20, 2, 8).transpose(1, 2)
    v = pmam.to_v(fy).view(2, 20, 2, 8).transpose(1, 2)
    flat = label.flatten(1)
    mask = (flat[:, :, None] == flat[:, None, :])[:, None]  # eq. 1
    pm = ((mask * torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1)) @ v).transpose(1, 2).reshape(2, 20, 16)
    expected = AttnProcessor2_0()(attn, x, encoder_hidden_states=text) + torch.tanh(pmam.gate) * pmam.to_out(
        pm
    )
    assert (out - expected).abs().max() < 1e-5


def test_locality_of_branch_and_pmam():
    """Renormalised mode: changing instance B's text token, its mask or the ControlNet features
    inside B leaves the branch and PMAM outputs on A's pixels unchanged.

    Paper mode (MT eq. 2/7 literally) is *not* local: B's keys sit in the unmasked softmax's
    denominator of A's rows, so B's token or mask rescales A's output (ControlNet features only
    enter V, so they stay local). The test documents that too."""
    torch.manual_seed(0)
    branch, pmam, attn = InstanceBranch(16, 12, 2), PixelMaskAttention(16, 2), _attn()
    with torch.no_grad():
        branch.gate.fill_(1.0)
        pmam.gate.fill_(1.0)
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[:, :4, :4] = 1
    label[:, 5:, 5:] = 2
    a = label.flatten(1)[0] == 1
    x, control, tokens = torch.randn(1, 64, 16), torch.randn(1, 64, 16), torch.randn(1, 3, 12)
    token_labels = torch.tensor([[0, 1, 2]])
    tokens_b = tokens.clone()
    tokens_b[:, 2] += 5.0  # B's text/mask changed -> B's token changed
    label_b = label.clone()
    label_b[:, 4:, 4:] = torch.where(label[:, 4:, 4:] == 2, 0, 2)  # B's mask moved (A untouched)
    control_b = control.clone()
    control_b[:, label.flatten(1)[0] == 2] += 3.0 * torch.randn(int((label == 2).sum()), 16)
    for mode in ("renormalized", "paper"):
        base = MTColorContext(label, (8, 8), tokens, token_labels, {(64, 16): control}, mode=mode)
        outs = []
        for ctx in (
            base,
            MTColorContext(label, (8, 8), tokens_b, token_labels, {(64, 16): control}, mode=mode),
            MTColorContext(label_b, (8, 8), tokens_b, token_labels, {(64, 16): control}, mode=mode),
            MTColorContext(label, (8, 8), tokens, token_labels, {(64, 16): control_b}, mode=mode),
        ):
            b_out = InstanceSelfAttnProcessor2_0(branch)(attn, x, mtcolor=ctx)
            p_out = PixelMaskAttnProcessor2_0(pmam, base=_NoAttn())(attn, x, mtcolor=ctx)
            outs.append((b_out, p_out))
        same_on_a = [
            torch.allclose(b_out[:, a], outs[0][0][:, a], atol=1e-6)
            and torch.allclose(p_out[:, a], outs[0][1][:, a], atol=1e-6)
            for b_out, p_out in outs[1:]
        ]
        if mode == "renormalized":
            assert all(same_on_a)
        else:  # B's token/mask change A's softmax denominator; V-only changes (ControlNet) stay local
            assert same_on_a == [False, False, True]
        assert not torch.allclose(outs[1][0], outs[0][0])  # B's own pixels did change
        assert not torch.allclose(outs[3][1], outs[0][1])


class _NoAttn:
    """A base processor returning zeros, isolating PMAM's contribution."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        return torch.zeros_like(hidden_states)


def test_ablation_switches_do_what_they_claim():
    torch.manual_seed(0)
    branch, pmam, attn = InstanceBranch(16, 12, 2), PixelMaskAttention(16, 2), _attn()
    with torch.no_grad():
        branch.gate.fill_(1.0)
        pmam.gate.fill_(1.0)
    x, control, tokens = torch.randn(1, 20, 16), torch.randn(1, 20, 16), torch.randn(1, 3, 12)
    label = torch.randint(0, 3, (1, 4, 5))
    token_labels = torch.tensor([[0, 1, 2]])
    stock = AttnProcessor2_0()(attn, x)

    def ctx(**kw):
        return MTColorContext(label, (4, 5), tokens, token_labels, {(20, 16): control}, **kw)

    assert torch.equal(
        InstanceSelfAttnProcessor2_0(branch)(attn, x, mtcolor=ctx(use_instance_branch=False)), stock
    )
    assert torch.equal(PixelMaskAttnProcessor2_0(pmam)(attn, x, mtcolor=ctx(use_pmam=False)), stock)
    unmasked = InstanceSelfAttnProcessor2_0(branch)(
        attn, x, mtcolor=ctx(use_instance_masks=False, mode="paper")
    )
    everything = torch.zeros_like(label)  # one label for every pixel and token == no mask
    expected = stock + _dense_branch(branch, x, everything.flatten(1), tokens, torch.zeros_like(token_labels))
    assert (unmasked - expected).abs().max() < 1e-5
    masked = InstanceSelfAttnProcessor2_0(branch)(attn, x, mtcolor=ctx(mode="paper"))
    assert not torch.allclose(masked, unmasked)


def test_pmam_key_source_control_uses_control_keys():
    torch.manual_seed(0)
    latent_keys, control_keys = PixelMaskAttention(16, 2, "latent"), PixelMaskAttention(16, 2, "control")
    control_keys.load_state_dict(latent_keys.state_dict())
    with torch.no_grad():
        latent_keys.gate.fill_(1.0)
        control_keys.gate.fill_(1.0)
    x, control, labels = torch.randn(1, 20, 16), torch.randn(1, 20, 16), torch.zeros(1, 20, dtype=torch.long)
    assert not torch.allclose(latent_keys(x, control, labels), control_keys(x, control, labels))
    with pytest.raises(ValueError, match="key_source"):
        PixelMaskAttention(16, 2, "text")


@torch.no_grad()
def test_save_load_round_trip(components, tmp_path):
    c = copy.deepcopy(components)
    randomize_adapter(c["adapter"], seed=5)
    c["adapter"].save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "diffusion_pytorch_model.safetensors").exists()
    loaded = MTColorAdapter.from_pretrained(tmp_path / "adapter")
    latents, t, hidden, embeds, counts, gray = _inputs(c)
    outs = []
    for adapter in (c["adapter"], loaded):
        unet = copy.deepcopy(components["unet"])
        adapter.install(unet)
        context = adapter.build_context(_label_map(), embeds, counts, (8, 8))
        outs.append(
            predict_noise(
                unet, latents, t, hidden, context=context, controlnet=c["controlnet"], control_image=gray
            )
        )
    assert torch.equal(outs[0], outs[1])


def test_stage_parameter_sets_partition_the_adapter(components):
    adapter = components["adapter"]
    stage1 = {n for n, _ in adapter.stage_parameters(1)}
    stage2 = {n for n, _ in adapter.stage_parameters(2)}
    assert stage1 and stage2 and not stage1 & stage2
    assert stage1 | stage2 == {n for n, _ in adapter.named_parameters()}
    assert all(n.startswith("pmams.") for n in stage2)
