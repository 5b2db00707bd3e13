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
:func:`~dataset_builder.verification.text_problem` (no refusal, has a colour word): the paper's
GPT-4 -> BLIP-2 fallback is the chain ``[openai, blip2]`` (add ``rule`` last for a text everywhere).
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mtcolor.color_names import (
    ColorMeasurement,
    ColorNamer,
    article,
    color_phrase,
    compose_global_text,
    describe_scheme,
    instance_phrase,
    join_words,
    strip_color_words,
)
from mtcolor.lexicon import default_lexicon

from .verification import text_problem

logger = logging.getLogger(__name__)


class CaptionerError(RuntimeError):
    """A captioner could not answer (e.g. the endpoint kept failing after its retries): the chain
    falls through to its next captioner and counts the error."""


class CaptionerConfigError(CaptionerError):
    """A configuration problem (bad key, unknown model, missing weights): fatal, never retried."""


@dataclass
class InstanceInput:
    """An instance to describe: ``mask`` bool (H, W), ``label`` (or None), ``measurement`` of its pixels."""

    mask: np.ndarray
    label: str | None
    measurement: ColorMeasurement | None = None

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), exclusive end."""
        rows = np.flatnonzero(self.mask.any(1))
        cols = np.flatnonzero(self.mask.any(0))
        if rows.size == 0:
            return 0, 0, self.mask.shape[1], self.mask.shape[0]
        return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


_FILLS = {"white": 255, "black": 0, "gray": 128}


def crop_instance(image: np.ndarray, mask: np.ndarray, fill: str | None = "white", margin: float = 0.05):
    """The instance's bounding-box crop as a PIL image, pixels outside the mask set to ``fill``.

    Args:
        image: uint8 (H, W, 3). mask: bool (H, W).
        fill: ``"white"``, ``"black"``, ``"gray"`` or None (keep the surrounding pixels).
        margin: grow the box by this fraction of its size on each side.
    """
    from PIL import Image

    x0, y0, x1, y1 = InstanceInput(mask, None).bbox
    dx, dy = int(round((x1 - x0) * margin)), int(round((y1 - y0) * margin))
    x0, y0 = max(0, x0 - dx), max(0, y0 - dy)
    x1, y1 = min(image.shape[1], x1 + dx), min(image.shape[0], y1 + dy)
    crop = image[y0:y1, x0:x1].copy()
    if fill is not None:
        if fill not in _FILLS:
            raise ValueError(f"fill={fill!r}; expected one of {sorted(_FILLS)} or None.")
        crop[~mask[y0:y1, x0:x1]] = _FILLS[fill]
    return Image.fromarray(crop)


class Captioner(ABC):
    """Base class. :attr:`name` is recorded as provenance ("rule", "blip2:<model>", "openai:<model>")."""

    name = "captioner"

    @abstractmethod
    def caption_instances(self, image: np.ndarray, instances: list[InstanceInput]) -> list[str | None]:
        """One "colour + object" phrase (or None) per instance of ``image`` (uint8 (H, W, 3))."""

    @abstractmethod
    def caption_global(
        self, image: np.ndarray, instances: list[InstanceInput], instance_texts: list[str]
    ) -> str | None:
        """The global text of ``image``, given the final instance texts (one per instance)."""


def _pairs(instances: list[InstanceInput], texts: list[str]) -> list[tuple[str, str]]:
    """(colour, label) per instance from its final text: "a light blue sky" -> ("light blue", "sky")."""
    lexicon = default_lexicon("extended")
    return [
        (color_phrase(text, lexicon), instance.label or strip_color_words(text, lexicon) or "object")
        for instance, text in zip(instances, texts)
    ]


class RuleBasedCaptioner(Captioner):
    """Offline captioner: the measured dominant colour (Lab, colour lexicon) + the object label.

    Instance text: "a red apple" (``"object"`` when the instance has no label). Global text: a
    colour-scheme sentence measured on the whole image (:func:`~mtcolor.color_names.describe_scheme`)
    followed by the enumeration of the instances ("The image shows a red apple and two green leaves.").

    Args:
        naming_vocabulary: ``"natural"`` (default), ``"basic"`` or ``"extended"``.
        min_share, max_pixels: see :class:`~mtcolor.color_names.ColorNamer`.
        max_global_objects: distinct phrases listed in the global text at most.
    """

    name = "rule"

    def __init__(
        self,
        naming_vocabulary: str = "natural",
        min_share: float = 0.2,
        max_pixels: int = 4096,
        max_global_objects: int = 12,
    ):
        self.namer = ColorNamer(naming_vocabulary, min_share, max_pixels)
        self.max_global_objects = int(max_global_objects)

    def caption_instances(self, image: np.ndarray, instances: list[InstanceInput]) -> list[str | None]:
        texts = []
        for instance in instances:
            measurement = instance.measurement or self.namer.measure(image, instance.mask)
            color = self.namer.name(measurement)
            texts.append(None if color is None else instance_phrase(color, instance.label or "object"))
        return texts

    def caption_global(
        self, image: np.ndarray, instances: list[InstanceInput], instance_texts: list[str]
    ) -> str | None:
        scheme = describe_scheme(image, self.namer)
        return compose_global_text(scheme, _pairs(instances, instance_texts), self.max_global_objects)


class Blip2Captioner(Captioner):
    """BLIP-2 (``Blip2ForConditionalGeneration`` + ``Blip2Processor``) from a local folder.

    Instances are asked ``instance_prompt`` on their crop; the colour words of the answer are combined
    with the label ("a red apple"); without a label the answer is used as it is. The global text is
    the answer to ``global_prompt`` followed by the enumeration of the instance texts (BLIP-2's short
    answers rarely list objects).

    Args:
        model_path: local folder with the model and processor files.
        device: torch device (default CUDA if available, else CPU). dtype: "auto", "float16",
            "bfloat16" or "float32" ("auto": float16 on CUDA, float32 on CPU).
        max_new_tokens, batch_size: generation settings.
        crop_fill: how the crop's pixels outside the mask are filled (see :func:`crop_instance`).
    """

    def __init__(
        self,
        model_path: str,
        device: str | None = None,
        dtype: str = "auto",
        max_new_tokens: int = 20,
        batch_size: int = 8,
        crop_fill: str | None = "white",
        instance_prompt: str = "Question: what color is the {label}? Answer:",
        unlabeled_prompt: str = "Question: what is this object and what color is it? Answer:",
        global_prompt: str = "Question: what are the main colors of this picture? Answer:",
        max_global_objects: int = 12,
    ):
        import torch
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        if not os.path.isdir(model_path):
            raise CaptionerConfigError(
                f"model_path={model_path!r} is not a folder; pass a local BLIP-2 model folder."
            )
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
        if dtype == "auto":
            self.dtype = torch.float16 if str(self.device).startswith("cuda") else torch.float32
        elif dtype in dtypes:
            self.dtype = dtypes[dtype]
        else:
            raise ValueError(f"dtype={dtype!r}; expected 'auto' or one of {sorted(dtypes)}.")
        self.processor = Blip2Processor.from_pretrained(model_path, local_files_only=True)
        self.processor.tokenizer.padding_side = "left"
        self.model = Blip2ForConditionalGeneration.from_pretrained(
            model_path, local_files_only=True, dtype=self.dtype
        )
        self.model.to(self.device).eval()
        self.name = f"blip2:{os.path.basename(os.path.normpath(model_path))}"
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.crop_fill = crop_fill
        self.instance_prompt = instance_prompt
        self.unlabeled_prompt = unlabeled_prompt
        self.global_prompt = global_prompt
        self.max_global_objects = int(max_global_objects)
        self.lexicon = default_lexicon("extended")

    def generate(self, images: list, prompts: list[str]) -> list[str]:
        """Answers (stripped) for PIL ``images`` and their ``prompts``, in batches."""
        import torch

        answers = []
        for start in range(0, len(images), self.batch_size):
            inputs = self.processor(
                images=images[start : start + self.batch_size],
                text=prompts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
            ).to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            with torch.inference_mode():
                output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            prompt_length = inputs["input_ids"].shape[1]
            if output.shape[1] > prompt_length and torch.equal(
                output[:, :prompt_length].cpu(), inputs["input_ids"].cpu()
            ):
                output = output[:, prompt_length:]
            answers += [a.strip() for a in self.processor.batch_decode(output, skip_special_tokens=True)]
        return answers

    def caption_instances(self, image: np.ndarray, instances: list[InstanceInput]) -> list[str | None]:
        if not instances:
            return []
        crops = [crop_instance(image, i.mask, self.crop_fill) for i in instances]
        prompts = [
            self.instance_prompt.format(label=i.label) if i.label else self.unlabeled_prompt
            for i in instances
        ]
        texts = []
        for instance, answer in zip(instances, self.generate(crops, prompts)):
            colors = list(dict.fromkeys(m.word for m in self.lexicon.find(answer)))
            if instance.label and colors:
                described = join_words(colors[:2])
                texts.append(f"{article(described)} {described} {instance.label}")
            else:
                texts.append(answer or None)
        return texts

    def caption_global(
        self, image: np.ndarray, instances: list[InstanceInput], instance_texts: list[str]
    ) -> str | None:
        from PIL import Image

        (answer,) = self.generate([Image.fromarray(image)], [self.global_prompt])
        answer = answer.strip().rstrip(".")
        if not answer:
            return None
        scheme = f"{answer[0].upper()}{answer[1:]}."
        return compose_global_text(scheme, _pairs(instances, instance_texts), self.max_global_objects)


INSTANCE_PROMPT = (
    "The image is a crop of one object{label_hint} from a photo; pixels outside the object may be blanked out. "
    "Answer with one short phrase of the form 'a <color> <object>' naming the object and its main color, "
    "for example 'a red apple'. Answer with the phrase only."
)
GLOBAL_PROMPT = (
    "Describe the colors of this photo in at most three sentences. Begin with the overall color scheme "
    "(for example 'A bright, warm-toned image with vivid colors.'), then name every object with its color"
    "{objects_hint}. Describe only colors and objects, nothing else."
)
_RETRY_STATUSES = (408, 409, 425, 429, 500, 502, 503, 504)


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


class OpenAICompatibleCaptioner(Captioner):
    """Any OpenAI-compatible ``/chat/completions`` endpoint with image input (standard library HTTP).

    Settings come from the environment (never from the config file, never logged or written):
    ``MTCOLOR_CAPTION_BASE_URL`` (fallback ``OPENAI_BASE_URL``, e.g. ``https://host/v1``),
    ``MTCOLOR_CAPTION_MODEL`` (fallback ``OPENAI_MODEL``) and the key ``MTCOLOR_CAPTION_API_KEY``
    (fallback ``OPENAI_API_KEY``; may be empty for local servers). ``base_url`` and ``model`` given
    here override the environment; a key is only ever read from the environment variable
    ``api_key_env``.

    Args:
        timeout: seconds per request.
        max_retries: retries after a retryable failure (HTTP 408/409/425/429/5xx, timeouts,
            connection errors); waits ``backoff * 2**attempt`` seconds (at most ``max_backoff``) or
            the server's ``Retry-After``. Then :class:`CaptionerError` (the chain falls through).
        requests_per_minute: per-process rate limit (None = unlimited); N processes send up to N times
            this rate.
        max_image_side: crops/images are downscaled to this longest side and sent as JPEG data URLs.
        crop_fill: fill of the crop outside the mask (see :func:`crop_instance`).

    A refusal (``finish_reason == "content_filter"``, an HTTP 400 mentioning a content policy or
    safety system, or a refusal text) gives ``None``. HTTP 401/403/404 raise
    :class:`CaptionerConfigError`. Requests to loopback addresses bypass any HTTP proxy.
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        requests_per_minute: float | None = None,
        max_image_side: int = 512,
        temperature: float = 0.0,
        max_tokens: int = 200,
        crop_fill: str | None = "white",
        instance_prompt: str = INSTANCE_PROMPT,
        global_prompt: str = GLOBAL_PROMPT,
    ):
        self.base_url = (base_url or _env("MTCOLOR_CAPTION_BASE_URL", "OPENAI_BASE_URL") or "").rstrip("/")
        if not self.base_url:
            raise CaptionerConfigError(
                "no endpoint: set MTCOLOR_CAPTION_BASE_URL (or OPENAI_BASE_URL) to the API base URL, e.g. "
                "https://host/v1, or pass base_url in the captioner config."
            )
        if urllib.parse.urlsplit(self.base_url).scheme not in ("http", "https"):
            raise CaptionerConfigError(f"base_url={self.base_url!r} is not an http(s) URL.")
        self.model = model or _env("MTCOLOR_CAPTION_MODEL", "OPENAI_MODEL")
        if not self.model:
            raise CaptionerConfigError(
                "no model: set MTCOLOR_CAPTION_MODEL (or pass model in the captioner config)."
            )
        names = (api_key_env,) if api_key_env else ("MTCOLOR_CAPTION_API_KEY", "OPENAI_API_KEY")
        self._api_key = _env(*names) or ""
        if timeout <= 0 or max_retries < 0 or backoff < 0:
            raise ValueError(
                f"timeout={timeout}, max_retries={max_retries}, backoff={backoff}; expected positive values."
            )
        if requests_per_minute is not None and requests_per_minute <= 0:
            raise ValueError(f"requests_per_minute={requests_per_minute}; expected a positive rate or None.")
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.min_interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.max_image_side = int(max_image_side)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.crop_fill = crop_fill
        self.instance_prompt = instance_prompt
        self.global_prompt = global_prompt
        self.name = f"openai:{self.model}"
        self._last_request = 0.0
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(self.base_url) else []
        self._opener = urllib.request.build_opener(*handlers)
        self.counters: Counter = Counter()

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _data_url(self, image) -> str:
        image = image.convert("RGB")
        if max(image.size) > self.max_image_side:
            image = image.copy()
            image.thumbnail((self.max_image_side, self.max_image_side))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def _throttle(self) -> None:
        if self.min_interval:
            wait = self._last_request + self.min_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._last_request = time.monotonic()

    def complete(self, prompt: str, image) -> str | None:
        """One chat completion with one image; the answer text, or None for a refusal."""
        body = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": prompt},
                        {"type": "image_url", "image_url": {"url": self._data_url(image)}},
                    ],
                }
            ],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = f"{self.base_url}/chat/completions"
        data = json.dumps(body).encode("utf-8")
        last_problem = ""
        for attempt in range(self.max_retries + 1):
            self._throttle()
            self.counters["requests"] += 1
            retry_after = None
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with self._opener.open(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return self._answer(payload)
            except urllib.error.HTTPError as error:
                detail = self._scrub(error.read(2000).decode("utf-8", "replace"))
                if error.code == 400 and any(
                    k in detail.lower()
                    for k in ("content_policy", "content policy", "safety", "content_filter")
                ):
                    self.counters["refusals"] += 1
                    return None
                if error.code in (401, 403, 404):
                    raise CaptionerConfigError(
                        f"HTTP {error.code} from {url}: check the model name and the key in the environment "
                        f"(MTCOLOR_CAPTION_API_KEY). Server said: {detail[:300]}"
                    ) from None
                if error.code not in _RETRY_STATUSES:
                    raise CaptionerError(f"HTTP {error.code} from {url}: {detail[:300]}") from None
                last_problem = f"HTTP {error.code}"
                header = error.headers.get("Retry-After") if error.headers else None
                try:
                    retry_after = float(header) if header is not None else None
                except ValueError:
                    retry_after = None
            except TimeoutError as error:
                last_problem = f"timeout after {self.timeout:g} s ({type(error).__name__})"
            except urllib.error.URLError as error:
                last_problem = f"connection error ({self._scrub(str(error.reason))})"
            except (ConnectionError, json.JSONDecodeError, UnicodeDecodeError) as error:
                last_problem = f"{type(error).__name__}: {self._scrub(str(error))[:200]}"
            if attempt < self.max_retries:
                wait = min(
                    self.max_backoff, retry_after if retry_after is not None else self.backoff * 2**attempt
                )
                self.counters["retries"] += 1
                logger.warning(
                    "caption request to %s failed (%s); retry %d/%d in %.2f s",
                    url,
                    last_problem,
                    attempt + 1,
                    self.max_retries,
                    wait,
                )
                time.sleep(wait)
        self.counters["failures"] += 1
        raise CaptionerError(f"{url} failed {self.max_retries + 1} times; last problem: {last_problem}")

    def _answer(self, payload: dict) -> str | None:
        try:
            choice = payload["choices"][0]
        except (KeyError, IndexError, TypeError) as error:
            raise CaptionerError(f"unexpected response without choices: {str(payload)[:200]}") from error
        if choice.get("finish_reason") == "content_filter":
            self.counters["refusals"] += 1
            return None
        message = choice.get("message") or {}
        if message.get("refusal"):
            self.counters["refusals"] += 1
            return None
        content = message.get("content")
        if isinstance(content, list):  # some servers return content parts
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        return content.strip() if isinstance(content, str) else None

    @staticmethod
    def _clean_phrase(text: str | None) -> str | None:
        if text is None:
            return None
        line = text.strip().splitlines()[0] if text.strip() else ""
        line = line.strip().strip("\"'`*").strip().rstrip(".").strip()
        return line[:1].lower() + line[1:] if line else None

    def caption_instances(self, image: np.ndarray, instances: list[InstanceInput]) -> list[str | None]:
        texts = []
        for instance in instances:
            hint = f" (a {instance.label})" if instance.label else ""
            crop = crop_instance(image, instance.mask, self.crop_fill)
            texts.append(
                self._clean_phrase(self.complete(self.instance_prompt.format(label_hint=hint), crop))
            )
        return texts

    def caption_global(
        self, image: np.ndarray, instances: list[InstanceInput], instance_texts: list[str]
    ) -> str | None:
        from PIL import Image

        hint = f" (the objects are: {'; '.join(instance_texts)})" if instance_texts else ""
        text = self.complete(self.global_prompt.format(objects_hint=hint), Image.fromarray(image))
        return " ".join(text.split()) if text else None


@dataclass
class ChainResult:
    """Texts and, per text, the name of the captioner that produced it ("" where none did)."""

    texts: list[str | None]
    captioners: list[str]
    problems: Counter = field(default_factory=Counter)


class CaptionerChain:
    """Try captioners in order; per text keep the first answer without a problem
    (:func:`~dataset_builder.verification.text_problem`: empty, refusal, no colour word).

    :class:`CaptionerError` from a captioner counts as ``"<name>:error"`` and falls through;
    :class:`CaptionerConfigError` is raised.
    """

    def __init__(self, captioners: list[Captioner]):
        if not captioners:
            raise ValueError("captioners is empty; configure at least one captioner (e.g. [{type: rule}]).")
        self.captioners = list(captioners)
        self.lexicon = default_lexicon("extended")

    def caption_instances(self, image: np.ndarray, instances: list[InstanceInput]) -> ChainResult:
        texts: list[str | None] = [None] * len(instances)
        names = [""] * len(instances)
        problems: Counter = Counter()
        pending = list(range(len(instances)))
        for captioner in self.captioners:
            if not pending:
                break
            try:
                answers = captioner.caption_instances(image, [instances[i] for i in pending])
            except CaptionerConfigError:
                raise
            except CaptionerError as error:
                logger.warning("captioner %s failed: %s", captioner.name, error)
                problems[f"{captioner.name}:error"] += len(pending)
                continue
            if len(answers) != len(pending):
                raise ValueError(
                    f"captioner {captioner.name} returned {len(answers)} texts for {len(pending)} instances."
                )
            still = []
            for index, answer in zip(pending, answers):
                problem = text_problem(answer, self.lexicon)
                if problem is None:
                    texts[index], names[index] = answer, captioner.name
                else:
                    problems[f"{captioner.name}:{problem}"] += 1
                    still.append(index)
            pending = still
        return ChainResult(texts, names, problems)

    def caption_global(
        self, image: np.ndarray, instances: list[InstanceInput], instance_texts: list[str]
    ) -> ChainResult:
        problems: Counter = Counter()
        for captioner in self.captioners:
            try:
                answer = captioner.caption_global(image, instances, instance_texts)
            except CaptionerConfigError:
                raise
            except CaptionerError as error:
                logger.warning("captioner %s failed: %s", captioner.name, error)
                problems[f"{captioner.name}:error"] += 1
                continue
            problem = text_problem(answer, self.lexicon)
            if problem is None:
                return ChainResult([answer], [captioner.name], problems)
            problems[f"{captioner.name}:{problem}"] += 1
        return ChainResult([None], [""], problems)
