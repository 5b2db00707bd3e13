"""Start the web UI: one session, one page, a bounded queue, loopback by default.

Limits that keep one server answering whatever it is sent: the pipeline runs one request at a
time (``concurrency_limit=1``), at most ``queue_size`` requests wait (more are refused with "queue
full"), uploads are capped at ``max_file_size`` and images at :data:`mtcolor.webui.inputs.MAX_PIXELS`, every
setting is range-checked (:data:`mtcolor.webui.inputs.LIMITS`), the working size is capped on both sides and
in area before the pipeline runs (:func:`mtcolor.webui.inputs.check_working_size`), and handlers read only
files gradio received for this server (:mod:`mtcolor.webui.received`).
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from .session import ServerConfig, Session

DEFAULT_HOST = "127.0.0.1"
DEFAULT_QUEUE_SIZE = 16
DEFAULT_MAX_FILE_SIZE = "25mb"


@dataclass
class Running:
    """A launched server: its page, session and URL (``close()`` stops it)."""

    demo: object
    session: Session
    url: str

    def close(self) -> None:
        self.demo.close()


def wait_until_serving(url: str, timeout: float = 30.0, interval: float = 0.1) -> None:
    """Poll ``url`` + ``gradio_api/info`` until it answers 200, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/gradio_api/info", timeout=10) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as err:
            last = err
        time.sleep(interval)
    raise TimeoutError(f"the web UI at {url} did not answer within {timeout:.0f} s (last error: {last})")


def _quiet_gradio() -> None:
    # offline machine: no usage analytics, no update checks
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def launch(
    config: ServerConfig | None = None,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    *,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    max_file_size: str | int = DEFAULT_MAX_FILE_SIZE,
    block: bool = False,
    preload: bool = True,
    session: Session | None = None,
    quiet: bool = True,
    on_ready=None,
) -> Running:
    """Build the session and the page and serve them.

    Args:
        config: models, SAM checkpoint, device (see :class:`mtcolor.webui.session.ServerConfig`).
        host: interface to bind (loopback unless told otherwise).
        port: TCP port (None: gradio's default search from 7860).
        queue_size: most requests waiting in the queue.
        max_file_size: largest upload (``"25mb"`` or bytes).
        block: serve until interrupted (the CLI) instead of returning at once (tests).
        preload: load the default model before serving, so the first request does not wait for it.
        session: an existing session to serve (tests reuse one).
        quiet: no start-up banner from gradio.
        on_ready: ``f(url)`` called once the server answers.
    """
    _quiet_gradio()
    from .app import build_app

    session = session or Session(config)
    if preload:
        session.preload()
    demo = build_app(session)
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    try:
        _launch(demo, session, host, port, max_file_size, quiet)
    except ValueError as err:
        # gradio checks that it reaches its own page with a few 3-second requests; on a starved
        # machine the page can answer slower than that although the server is up: wait for it.
        if "localhost is not accessible" not in str(err) or not getattr(demo, "local_url", None):
            raise
        wait_until_serving(demo.local_url, timeout=120)
    running = Running(demo=demo, session=session, url=demo.local_url)
    if on_ready is not None:
        on_ready(running.url)
    if block:
        try:
            demo.block_thread()
        finally:
            demo.close()
    return running


def _launch(demo, session: Session, host: str, port: int | None, max_file_size, quiet: bool) -> None:
    from .layout import CSS, HEAD

    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=True,
        show_error=True,
        max_file_size=max_file_size,
        allowed_paths=[str(session.workspace.root)],
        quiet=quiet,
        ssr_mode=False,
        inbrowser=False,
        css=CSS,
        head=HEAD,
        footer_links=[],
    )
