"""diffusers attention processors that plug MT-Color into a stock UNet.

* :class:`InstanceSelfAttnProcessor2_0` for every ``attn1``: the UNet's own self-attention (computed
  by a wrapped stock processor) + the gated masked instance branch (MT eq. 4-7).
* :class:`PixelMaskAttnProcessor2_0` for every ``attn2``: the UNet's own text cross-attention +
  the gated pixel-level mask attention (PMAM, MT eq. 1-2) on the ControlNet features of the same
  token count and width.

The per-call data (label maps, instance tokens, ControlNet features) travels in
``cross_attention_kwargs={"mtcolor": MTColorContext(...)}``: the processors declare ``mtcolor`` as
a named keyword (diffusers drops undeclared keywords). Without a context they behave exactly like
the wrapped processor.

The wrapped ("base") processor may be any diffusers processor (``AttnProcessor2_0`` by default,
``XFormersAttnProcessor`` after ``enable_xformers_memory_efficient_attention``,
``SlicedAttnProcessor`` after ``enable_attention_slicing``), so switching the UNet's attention
implementation does not remove MT-Color. It is called with only the keywords its ``__call__``
declares (``SlicedAttnProcessor`` takes no ``temb``), inspected once when it is set.

diffusers hands a processor only the ``cross_attention_kwargs`` its ``__call__`` declares, so each
MT-Color processor declares the wrapped processor's extra keywords too (its instance's ``__call__``
signature is the union): a keyword meant for the wrapped processor (e.g. a LoRA-style ``scale`` of
a custom processor) passes through ``pipe(..., cross_attention_kwargs=...)`` to it.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field, replace

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from ..masks import resize_label_map, token_grid
from .kernels import LabelPartition


@dataclass
class MTColorContext:
    """Everything the MT-Color processors need for one UNet call.

    Args:
        label_map: (B, H, W) int64 label map per sample (0 = background), at any resolution that
            is a multiple of the latent size (pixel or latent resolution).
        latent_size: (h, w) of the UNet input latents; token grids are derived from it.
        instance_tokens: (B, M, D_inst) instance tokens (index 0 = the learned null token) or None.
        instance_labels: (B, M) int64 label of each token (0 for the null token, k for instance k,
            -1 for padding).
        control_features: ``{(num_tokens, width): (B, num_tokens, width)}`` ControlNet features.
        mode: masked attention mode, ``"renormalized"`` or ``"paper"`` (see ``masked_attention``).
        impl: masked attention implementation (``"auto"``, ``"segments"``, ``"sdpa_mask"``, ...).
        use_instance_branch / use_instance_masks / use_pmam: ablation switches (MT Tables III-V):
            no branch, branch without masks (plain self-attention over latent + instance tokens),
            no PMAM.
    """

    label_map: torch.Tensor
    latent_size: tuple[int, int]
    instance_tokens: torch.Tensor | None = None
    instance_labels: torch.Tensor | None = None
    control_features: dict = field(default_factory=dict)
    mode: str = "renormalized"
    impl: str = "auto"
    use_instance_branch: bool = True
    use_instance_masks: bool = True
    use_pmam: bool = True
    _cache: dict = field(default_factory=dict, repr=False)

    def labels_at(self, num_tokens: int) -> torch.Tensor:
        """(B, num_tokens) labels on the token grid of an attention layer (majority vote)."""
        key = ("labels", num_tokens)
        if key not in self._cache:
            grid = token_grid(num_tokens, *self.latent_size)
            self._cache[key] = resize_label_map(self.label_map, grid).flatten(1)
        return self._cache[key]

    def branch_labels(self, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor, LabelPartition]:
        """Query labels, key labels ([latent; instance tokens]) and the partition for the branch."""
        key = ("branch", num_tokens)
        if key not in self._cache:
            q_labels = self.labels_at(num_tokens)
            token_labels = self.instance_labels
            if not self.use_instance_masks:  # ablation: every token sees every valid token
                q_labels = torch.zeros_like(q_labels)
                token_labels = torch.where(token_labels >= 0, 0, -1)
            k_labels = torch.cat([q_labels, token_labels.to(q_labels.device)], dim=1)
            self._cache[key] = (q_labels, k_labels, LabelPartition.build(q_labels, k_labels))
        return self._cache[key]

    def pixel_labels(self, num_tokens: int) -> tuple[torch.Tensor, LabelPartition]:
        key = ("pixel", num_tokens)
        if key not in self._cache:
            labels = self.labels_at(num_tokens)
            self._cache[key] = (labels, LabelPartition.build(labels, labels))
        return self._cache[key]

    def with_control(self, features: dict) -> MTColorContext:
        """A copy with new ControlNet features that shares the label/partition caches."""
        return replace(self, control_features=features)  # the _cache dict object is shared, not copied


def _accepted_keywords(processor) -> frozenset[str] | None:
    """The keyword arguments ``processor(attn, hidden_states, **kw)`` accepts, or ``None`` if it takes
    ``**kwargs`` (any keyword). diffusers processors differ: ``SlicedAttnProcessor`` has no ``temb``."""
    try:
        parameters = inspect.signature(processor).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: pass every keyword
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


class _WrapsBaseProcessor:
    """Holds the wrapped ("base") diffusers processor and calls it with only the keywords its
    ``__call__`` declares (inspected once, when ``base`` is set)."""

    def __init__(self, base=None):
        self.base = base if base is not None else AttnProcessor2_0()

    @property
    def base(self):
        return self._base

    @base.setter
    def base(self, processor) -> None:
        self._base = processor
        self._base_keywords = _accepted_keywords(processor)
        self._declare_base_keywords()

    def _declare_base_keywords(self) -> None:
        """Make ``inspect.signature(self.__call__)`` (what diffusers' ``Attention`` reads to filter
        ``cross_attention_kwargs``) list this processor's own parameters plus the wrapped processor's
        extra keywords; calls still go to the class's ``__call__``, which forwards them."""
        own = inspect.signature(type(self).__call__)
        parameters = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD][1:]  # no self
        taken = {p.name for p in parameters} | {"self"}
        extra = sorted((self._base_keywords or frozenset()) - taken)
        parameters += [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in extra
        ]
        declared = functools.partial(type(self).__call__, self)
        declared.__signature__ = own.replace(parameters=parameters)
        self.__dict__["__call__"] = declared  # read by attribute access only; calls use the class's

    def _call_base(
        self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, extra: dict | None = None
    ) -> torch.Tensor:
        keywords = {
            "encoder_hidden_states": encoder_hidden_states,
            "attention_mask": attention_mask,
            "temb": temb,
            **(extra or {}),
        }
        accepted = self._base_keywords
        if accepted is not None:
            dropped = [name for name, value in keywords.items() if name not in accepted and value is not None]
            if dropped:
                raise ValueError(
                    f"the wrapped processor {type(self._base).__name__} does not accept {dropped}, but this "
                    f"call passes them (not None); set a processor that takes them (e.g. AttnProcessor2_0) "
                    "before installing the MT-Color adapter."
                )
            keywords = {name: value for name, value in keywords.items() if name in accepted}
        return self._base(attn, hidden_states, **keywords)


class InstanceSelfAttnProcessor2_0(_WrapsBaseProcessor):
    """``attn1`` processor: stock self-attention + gated masked instance branch (MT eq. 4-7).

    Not an ``nn.Module`` on purpose: the branch's weights belong to the ``MTColorAdapter`` (saved
    with it), so the UNet's state dict stays the stock one.

    Args:
        branch: the block's ``InstanceBranch``.
        base: the wrapped diffusers processor (any: ``AttnProcessor``, ``AttnProcessor2_0``,
            ``SlicedAttnProcessor``, ``XFormersAttnProcessor``, ...); ``AttnProcessor2_0`` if None.
    """

    def __init__(self, branch, base=None):
        super().__init__(base)
        self.branch = branch

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        mtcolor: MTColorContext | None = None,
        **base_kwargs,
    ) -> torch.Tensor:
        out = self._call_base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, base_kwargs)
        if mtcolor is None or not mtcolor.use_instance_branch or mtcolor.instance_tokens is None:
            return out
        q_labels, k_labels, partition = mtcolor.branch_labels(hidden_states.shape[1])
        branch_out = self.branch(
            hidden_states,
            q_labels,
            mtcolor.instance_tokens,
            k_labels[:, q_labels.shape[1] :],
            mode=mtcolor.mode,
            impl=mtcolor.impl,
            partition=partition,
        )
        return out + branch_out.to(out.dtype)


class PixelMaskAttnProcessor2_0(_WrapsBaseProcessor):
    """``attn2`` processor: stock text cross-attention + gated PMAM (MT eq. 1-2).

    Args:
        pmam: the block's ``PixelMaskAttention``.
        base: the wrapped diffusers processor, as in :class:`InstanceSelfAttnProcessor2_0`.
    """

    def __init__(self, pmam, base=None):
        super().__init__(base)
        self.pmam = pmam

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        mtcolor: MTColorContext | None = None,
        **base_kwargs,
    ) -> torch.Tensor:
        out = self._call_base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, base_kwargs)
        if mtcolor is None or not mtcolor.use_pmam:
            return out
        tokens, width = hidden_states.shape[1], hidden_states.shape[2]
        control = mtcolor.control_features.get((tokens, width))
        if control is None:
            return out
        labels, partition = mtcolor.pixel_labels(tokens)
        pmam_out = self.pmam(
            hidden_states, control, labels, mode=mtcolor.mode, impl=mtcolor.impl, partition=partition
        )
        return out + pmam_out.to(out.dtype)


MTCOLOR_PROCESSORS = (InstanceSelfAttnProcessor2_0, PixelMaskAttnProcessor2_0)
