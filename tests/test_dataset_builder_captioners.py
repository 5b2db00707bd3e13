"""The OpenAI-compatible captioner against a local fake server (127.0.0.1), and the fallback chain.

Waits (backoff, rate limit) and timeouts run on a fake clock: outcomes never depend on wall time.
"""

import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from mtcolor.dataset_builder.build import build
from mtcolor.dataset_builder.captioners import (
    CaptionerChain,
    CaptionerConfigError,
    CaptionerError,
    InstanceInput,
    OpenAICompatibleCaptioner,
    RuleBasedCaptioner,
)
from mtcolor.dataset_builder.config import BuildConfig

from mtcolor.records import load_records

KEY = "sk-test-SECRET-4242"


class FakeChatServer:
    """A bounded fake ``/chat/completions`` endpoint. ``script`` holds the next responses:
    ("ok", text) | ("filter",) | ("status", code, retry_after) | ("hang",) (no answer until the server
    stops); when empty it answers "A red box." to instance prompts and a colour description to global
    prompts."""

    def __init__(self, max_requests=200):
        self.script = []
        self.release = threading.Event()  # ends the "hang" steps
        self.requests = []
        self.max_requests = max_requests
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                server.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                )
                if len(server.requests) > server.max_requests:
                    return self._send(500, {"error": "too many requests in this test"})
                step = server.script.pop(0) if server.script else None
                prompt = body["messages"][0]["content"][0]["text"]
                default = (
                    "A red box."
                    if "crop of one object" in prompt
                    else "A bright image with vivid colors. It shows a red box."
                )
                try:
                    if step is None or step[0] == "ok":
                        self._reply(step[1] if step else default)
                    elif step[0] == "filter":
                        self._send(
                            200,
                            {"choices": [{"message": {"content": ""}, "finish_reason": "content_filter"}]},
                        )
                    elif step[0] == "status":
                        headers = {"Retry-After": str(step[2])} if step[2] is not None else {}
                        self._send(step[1], {"error": {"message": f"status {step[1]}"}}, headers)
                    elif step[0] == "hang":
                        server.release.wait()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _reply(self, text):
                self._send(
                    200,
                    {
                        "choices": [
                            {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ]
                    },
                )

            def _send(self, code, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeClock:
    """``monotonic()`` and ``sleep()`` for the captioner: sleeping advances the clock, instantly."""

    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class SlowEndpoint:
    """A fake transport (the captioner's ``opener``) on a :class:`FakeClock`: request ``i`` takes
    ``delays[i]`` seconds; one longer than the request's timeout raises ``TimeoutError`` at the
    timeout, as a socket read does; otherwise it answers ``text``."""

    def __init__(self, clock: FakeClock, delays: list[float], text: str = "a green box"):
        self.clock, self.delays, self.text = clock, list(delays), text
        self.requests = []  # (clock at send, timeout)

    def open(self, request, timeout):
        self.requests.append((self.clock.now, timeout))
        delay = self.delays.pop(0)
        if delay > timeout:
            self.clock.now += timeout
            raise TimeoutError("timed out")
        self.clock.now += delay
        answer = {"choices": [{"message": {"content": self.text}, "finish_reason": "stop"}]}
        return io.BytesIO(json.dumps(answer).encode())


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("MTCOLOR_CAPTION_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeChatServer() as fake:
        monkeypatch.setenv("MTCOLOR_CAPTION_BASE_URL", fake.url)
        monkeypatch.setenv("MTCOLOR_CAPTION_MODEL", "fake-vlm")
        yield fake


def _scene():
    image = np.full((16, 16, 3), 128, np.uint8)
    image[4:12, 4:12] = (229, 0, 0)
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    return image, [InstanceInput(mask, "box")]


def test_success_sends_image_model_and_key(server):
    captioner = OpenAICompatibleCaptioner(timeout=5, max_retries=0)
    assert captioner.name == "openai:fake-vlm" and KEY not in repr(captioner)
    image, instances = _scene()
    assert captioner.caption_instances(image, instances) == ["a red box"]
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions" and request["auth"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "fake-vlm"
    assert "(a box)" in body["messages"][0]["content"][0]["text"]
    assert body["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert captioner.caption_global(image, instances, ["a red box"]).startswith("A bright image")
    assert "a red box" in server.requests[-1]["body"]["messages"][0]["content"][0]["text"]


def test_refusals_fall_through_to_the_next_captioner(server):
    image, instances = _scene()
    chain = CaptionerChain([OpenAICompatibleCaptioner(timeout=5, max_retries=0), RuleBasedCaptioner()])
    server.script = [("filter",)]
    result = chain.caption_instances(image, instances)
    assert result.texts == ["a red box"] and result.captioners == ["rule"]
    assert result.problems == {"openai:fake-vlm:no_answer": 1}
    server.script = [("ok", "Unable to provide color description, image is too blurred and unclear.")]
    result = chain.caption_instances(image, instances)
    assert result.captioners == ["rule"] and result.problems == {"openai:fake-vlm:refusal": 1}
    server.script = [("status", 400, None)]  # a 400 without a content-policy message is an error
    result = chain.caption_instances(image, instances)
    assert result.captioners == ["rule"] and result.problems == {"openai:fake-vlm:error": 1}


def test_http_429_then_success_retries_with_backoff(server, caplog):
    clock = FakeClock()
    captioner = OpenAICompatibleCaptioner(
        timeout=5, max_retries=3, backoff=0.25, clock=clock.monotonic, sleep=clock.sleep
    )
    image, instances = _scene()
    server.script = [("status", 429, "7"), ("status", 503, None), ("ok", "a crimson box")]
    with caplog.at_level(logging.WARNING):
        assert captioner.caption_instances(image, instances) == ["a crimson box"]
    assert len(server.requests) == 3 and captioner.counters["retries"] == 2
    assert clock.sleeps == [7.0, 0.5]  # the server's Retry-After, then backoff * 2**1
    assert "HTTP 429" in caplog.text and KEY not in caplog.text


def test_timeout_then_retry_and_exhausted_retries(server, caplog):
    """Timeouts on a fake clock: the first request outlasts its 0.3 s, the retry (after backoff) answers."""
    image, instances = _scene()
    clock = FakeClock()
    endpoint = SlowEndpoint(clock, delays=[1.0, 0.05])
    captioner = OpenAICompatibleCaptioner(
        timeout=0.3, max_retries=1, backoff=0.5, opener=endpoint, clock=clock.monotonic, sleep=clock.sleep
    )
    with caplog.at_level(logging.WARNING):
        assert captioner.caption_instances(image, instances) == ["a green box"]
    assert endpoint.requests == [(0.0, 0.3), (0.8, 0.3)]  # timed out at 0.3, waited 0.5, retried
    assert clock.sleeps == [0.5] and captioner.counters["retries"] == 1
    assert "timeout after 0.3 s" in caplog.text
    endpoint = SlowEndpoint(clock, delays=[1.0, 0.4])
    strict = OpenAICompatibleCaptioner(
        timeout=0.3, max_retries=1, backoff=0.0, opener=endpoint, clock=clock.monotonic, sleep=clock.sleep
    )
    with pytest.raises(CaptionerError, match="failed 2 times; last problem: timeout after 0.3 s"):
        strict.caption_instances(image, instances)
    assert len(endpoint.requests) == 2 and strict.counters["failures"] == 1
    assert KEY not in caplog.text


def test_a_server_that_never_answers_is_a_timeout(server):
    """A real socket read timeout (the server holds the request until the test ends, so the outcome does
    not depend on timing) is reported as a timeout, the kind of failure that is retried."""
    image, instances = _scene()
    server.script = [("hang",)]
    captioner = OpenAICompatibleCaptioner(timeout=0.5, max_retries=0)
    with pytest.raises(CaptionerError, match=r"failed 1 times; last problem: timeout after 0.5 s \(\w+\)"):
        captioner.caption_instances(image, instances)


def test_auth_errors_are_fatal_and_keyless(server):
    image, instances = _scene()
    chain = CaptionerChain(
        [OpenAICompatibleCaptioner(timeout=5, max_retries=3, backoff=0.0), RuleBasedCaptioner()]
    )
    server.script = [("status", 401, None)]
    with pytest.raises(CaptionerConfigError, match="HTTP 401") as error:
        chain.caption_instances(image, instances)
    assert KEY not in str(error.value) and len(server.requests) == 1  # never retried


def test_missing_endpoint_or_model_raises(monkeypatch):
    for name in ("MTCOLOR_CAPTION_BASE_URL", "OPENAI_BASE_URL", "MTCOLOR_CAPTION_MODEL", "OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(CaptionerConfigError, match="MTCOLOR_CAPTION_BASE_URL"):
        OpenAICompatibleCaptioner()
    with pytest.raises(CaptionerConfigError, match="MTCOLOR_CAPTION_MODEL"):
        OpenAICompatibleCaptioner(base_url="http://127.0.0.1:9/v1")


def test_rate_limit_spaces_requests(server):
    clock = FakeClock()
    captioner = OpenAICompatibleCaptioner(
        timeout=5, max_retries=0, requests_per_minute=600, clock=clock.monotonic, sleep=clock.sleep
    )  # 0.1 s apart
    image, instances = _scene()
    captioner.caption_instances(image, instances * 3)
    assert len(server.requests) == 3
    assert clock.sleeps == pytest.approx([0.1, 0.1])  # the first request does not wait
    clock.sleep(0.25)  # idle longer than the interval: the next request goes at once
    captioner.caption_instances(image, instances)
    assert clock.sleeps == pytest.approx([0.1, 0.1, 0.25])


def test_build_with_vlm_chain_never_writes_the_key(server, tmp_path):
    from mtcolor.dataset_builder.synthetic import SyntheticConfig, export_coco

    annotations = export_coco(
        tmp_path / "coco", 3, SyntheticConfig(image_size=32, num_objects=(1, 1)), seed=5
    )
    server.script = [("filter",)]  # the first instance is refused: the rule-based namer takes over
    config = BuildConfig.from_dict(
        {
            "output_dir": str(tmp_path / "out"),
            "source": {
                "type": "coco",
                "annotation_file": str(annotations),
                "image_root": str(tmp_path / "coco" / "images"),
            },
            "captioners": [
                {"type": "openai", "timeout": 5, "max_retries": 1, "backoff": 0.0},
                {"type": "rule"},
            ],
            "verification": {"rewrite": True},
            "skip_grayscale": False,
        }
    )
    build(config, progress=False)
    dataset = load_records(tmp_path / "out")
    captioners = [c for row in dataset["instance_captioners"] for c in row]
    assert captioners[0] == "rule" and all(c.startswith("openai:fake-vlm") for c in captioners[1:])
    # the server always says "red": texts on other colours were rewritten by the verifier
    for row in dataset:
        for captioner, status, color in zip(
            row["instance_captioners"], row["verification"], row["instance_colors"]
        ):
            assert status == "agree"
            assert (captioner == "openai:fake-vlm") == (color == "red") or captioner == "rule"
    assert set(dataset["global_captioner"]) == {"openai:fake-vlm"}
    for path in Path(tmp_path / "out").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
