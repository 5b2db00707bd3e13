"""Captioners: one interface for every text generator, and the fallback chain.

A :class:`Captioner` turns an image and its instances into

* one "colour + object" phrase per instance (``caption_instances``, on the instance crop), and
* one global text that opens with the overall colour scheme and enumerates the objects with their
  colours (``caption_global``).

It returns ``None`` (or any text: the chain validates) where it cannot describe something. Built-in:

* ``"rule"`` :class:`RuleBasedCaptioner`: offline; names the measured dominant colour of the pixels
  (:class:`~mtcolor.color_names.ColorNamer`) and combines it with the object label.
* ``"blip2"`` :class:`Blip2Captioner`: BLIP-2 through transformers from a local folder.
* ``"openai"`` :class:`OpenAICompatibleCaptioner`: any OpenAI-compatible chat-completions endpoint
  (base URL, model and key from the environment), with retries, backoff and a rate limit.

:class:`CaptionerChain` tries captioners in order and keeps, per text, the first one that passes
:func:`~mtcolor.dataset_builder.verification.text_problem` (no refusal, has a colour word): the paper's
GPT-4 -> BLIP-2 fallback is the chain ``[openai, blip2]`` (add ``rule`` last for a text everywhere).

Modules: :mod:`.base` (the interface, :class:`InstanceInput`, :func:`crop_instance`, the errors),
:mod:`.local` (rule-based and BLIP-2, in this process), :mod:`.openai_api` (the HTTP API client),
:mod:`.chain` (the fallback chain). Import the names from ``mtcolor.dataset_builder.captioners``.
"""

from .base import Captioner, CaptionerConfigError, CaptionerError, InstanceInput, crop_instance
from .chain import CaptionerChain, ChainResult
from .local import Blip2Captioner, RuleBasedCaptioner
from .openai_api import GLOBAL_PROMPT, INSTANCE_PROMPT, OpenAICompatibleCaptioner

__all__ = [
    "GLOBAL_PROMPT",
    "INSTANCE_PROMPT",
    "Blip2Captioner",
    "Captioner",
    "CaptionerChain",
    "CaptionerConfigError",
    "CaptionerError",
    "ChainResult",
    "InstanceInput",
    "OpenAICompatibleCaptioner",
    "RuleBasedCaptioner",
    "crop_instance",
]
