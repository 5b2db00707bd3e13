"""The MT-Color processors wrap whatever processor diffusers' ``Attention`` carries (AttnProcessor,
AttnProcessor2_0, SlicedAttnProcessor, XFormersAttnProcessor) and call it with only the keywords it
accepts; tested on a bare ``diffusers.models.attention_processor.Attention`` and through the pipeline
after ``enable_attention_slicing()``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    SlicedAttnProcessor,
    XFormersAttnProcessor,
)
from diffusers.utils import is_xformers_available

from mtcolor import MTColorPipeline
from mtcolor.attention.processors import (
    InstanceSelfAttnProcessor2_0,
    MTColorContext,
    PixelMaskAttnProcessor2_0,
)
from mtcolor.models.branches import InstanceBranch, PixelMaskAttention
from mtcolor.testing import randomize_adapter, tiny_components

_XFORMERS_OK = is_xformers_available() and torch.cuda.is_available()  # xformers has no CPU kernels
BASES = [
    pytest.param(AttnProcessor, id="AttnProcessor"),
    pytest.param(AttnProcessor2_0, id="AttnProcessor2_0"),
    pytest.param(lambda: SlicedAttnProcessor(slice_size=1), id="SlicedAttnProcessor"),
    pytest.param(
        XFormersAttnProcessor,
        id="XFormersAttnProcessor",
        marks=pytest.mark.skipif(not _XFORMERS_OK, reason="xformers (and a CUDA device) not available"),
    ),
]
DIM, HEADS, TEXT_DIM = 16, 2, 8


def _device():
    return "cuda" if _XFORMERS_OK else "cpu"


def _modules():
    torch.manual_seed(0)
    self_attn = Attention(query_dim=DIM, heads=HEADS, dim_head=DIM // HEADS)
    cross_attn = Attention(query_dim=DIM, heads=HEADS, dim_head=DIM // HEADS, cross_attention_dim=TEXT_DIM)
    branch, pmam = InstanceBranch(DIM, 12, HEADS), PixelMaskAttention(DIM, HEADS)
    with torch.no_grad():
        branch.gate.fill_(0.7)
        pmam.gate.fill_(0.5)
    return [m.to(_device()).eval() for m in (self_attn, cross_attn, branch, pmam)]


def _context():
    gen = torch.Generator().manual_seed(1)
    label = torch.randint(0, 3, (2, 4, 5), generator=gen)
    tokens = torch.randn(2, 3, 12, generator=gen)
    token_labels = torch.tensor([[0, 1, 2], [0, 1, -1]])
    control = torch.randn(2, 20, DIM, generator=gen)
    device = _device()
    return MTColorContext(
        label.to(device), (4, 5), tokens.to(device), token_labels.to(device), {(20, DIM): control.to(device)}
    )


@pytest.mark.parametrize("make_base", BASES)
@torch.no_grad()
def test_processors_run_on_every_base_processor_and_add_the_same_branch(make_base):
    """Through ``Attention.forward`` (which filters ``cross_attention_kwargs`` by signature): with no
    context the output is the base processor's; with one, base + the same branch / PMAM output as
    over AttnProcessor2_0."""
    self_attn, cross_attn, branch, pmam = _modules()
    gen = torch.Generator().manual_seed(2)
    x, text = torch.randn(2, 20, DIM, generator=gen), torch.randn(2, 7, TEXT_DIM, generator=gen)
    x, text = x.to(_device()), text.to(_device())
    ctx = _context()
    base = make_base()
    stock_self = base(self_attn, x)
    stock_cross = base(cross_attn, x, encoder_hidden_states=text)

    self_attn.set_processor(InstanceSelfAttnProcessor2_0(branch, base))
    cross_attn.set_processor(PixelMaskAttnProcessor2_0(pmam, base))
    assert torch.equal(self_attn(x), stock_self)
    assert torch.equal(cross_attn(x, encoder_hidden_states=text), stock_cross)
    got_self = self_attn(x, mtcolor=ctx)
    got_cross = cross_attn(x, encoder_hidden_states=text, mtcolor=ctx)

    self_attn.set_processor(InstanceSelfAttnProcessor2_0(branch, AttnProcessor2_0()))
    cross_attn.set_processor(PixelMaskAttnProcessor2_0(pmam, AttnProcessor2_0()))
    ref_self = self_attn(x, mtcolor=ctx)
    ref_cross = cross_attn(x, encoder_hidden_states=text, mtcolor=ctx)
    assert (got_self - stock_self - (ref_self - AttnProcessor2_0()(self_attn, x))).abs().max() < 1e-5
    assert (got_self - ref_self).abs().max() < 1e-4  # same attention maths, other kernel
    assert (got_cross - ref_cross).abs().max() < 1e-4
    assert (got_self - stock_self).abs().max() > 1e-2  # the branch did contribute


@pytest.mark.parametrize("make_base", BASES[:3])
def test_processors_take_a_temb_only_where_the_base_does(make_base):
    """``temb`` is forwarded when not None and the base declares it; a base without it (Sliced)
    gets a ValueError naming it instead of a silent drop."""
    self_attn, _, branch, _ = _modules()
    x, temb = torch.randn(1, 20, DIM), torch.randn(1, DIM)
    base = make_base()
    proc = InstanceSelfAttnProcessor2_0(branch, base)
    assert torch.equal(proc(self_attn, x, temb=None), base(self_attn, x))
    if isinstance(base, SlicedAttnProcessor):
        with pytest.raises(ValueError, match=r"SlicedAttnProcessor does not accept \['temb'\]"):
            proc(self_attn, x, temb=temb)
    else:
        assert torch.equal(proc(self_attn, x, temb=temb), base(self_attn, x, temb=temb))


def test_swapping_the_base_processor_refreshes_the_accepted_keywords():
    self_attn, _, branch, _ = _modules()
    x = torch.randn(1, 20, DIM)
    proc = InstanceSelfAttnProcessor2_0(branch, AttnProcessor2_0())
    proc.base = SlicedAttnProcessor(slice_size=1)
    assert torch.equal(proc(self_attn, x), SlicedAttnProcessor(slice_size=1)(self_attn, x))


def test_pipeline_runs_with_attention_slicing(tmp_path):
    """``enable_attention_slicing()`` replaces every processor with SlicedAttnProcessor; the pipeline
    re-installs MT-Color on top of them and gives the unsliced result (same maths)."""
    components = tiny_components(0, tokenizer_cache=str(tmp_path))
    randomize_adapter(components["adapter"], seed=1, gate=0.5, scale=0.05)
    pipe = MTColorPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.RandomState(0)
    gray = rng.rand(48, 64).astype(np.float32)
    mask = np.zeros((48, 64), bool)
    mask[:24, :32] = True
    # colour steering off: its finite-difference step turns float rounding into larger changes
    kw = dict(
        prompt="a street", num_inference_steps=2, working_resolution=64, output_type="latent", colors_from_texts=False
    )

    def run():
        return pipe(gray, [mask], ["a red car"], generator=torch.Generator().manual_seed(0), **kw).images

    plain = run()
    pipe.enable_attention_slicing(1)
    sliced = run()
    # between calls the UNet keeps the sliced processors; a call runs MT-Color on top of them
    assert all(isinstance(p, SlicedAttnProcessor) for p in pipe.unet.attn_processors.values())
    with pipe.mtcolor_attention():
        assert all(isinstance(p.base, SlicedAttnProcessor) for p in pipe.unet.attn_processors.values())
    assert (sliced - plain).abs().max() < 1e-4
