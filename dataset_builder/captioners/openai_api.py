"""The API-client captioner: any OpenAI-compatible ``/chat/completions`` endpoint with image input,
over standard-library HTTP, with retries, backoff, a rate limit and a secret-safe key."""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import logging
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable

import numpy as np

from .base import Captioner, CaptionerConfigError, CaptionerError, InstanceInput, crop_instance

logger = logging.getLogger(__name__)

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
        opener: what sends the HTTP requests: anything with ``open(request, timeout=seconds)`` that
            returns a response (a context manager with ``read()``) and raises like
            ``urllib.request.OpenerDirector`` (``HTTPError``, ``URLError``, ``TimeoutError``); None =
            urllib's, bypassing any proxy for loopback addresses.
        clock, sleep: the monotonic clock (seconds) and the sleep function of the rate limit and the
            backoff waits (default :func:`time.monotonic`, :func:`time.sleep`; tests pass a fake clock).

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
        *,
        opener=None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
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
        self._clock, self._sleep = clock, sleep
        self._last_request = -math.inf  # the first request never waits, whatever the clock's origin
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(self.base_url) else []
        self._opener = opener if opener is not None else urllib.request.build_opener(*handlers)
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
            wait = self._last_request + self.min_interval - self._clock()
            if wait > 0:
                self._sleep(wait)
        self._last_request = self._clock()

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
                self._sleep(wait)
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
