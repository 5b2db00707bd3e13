"""Helpers for the web UI's tests: a server on a free loopback port, readiness polling."""

from __future__ import annotations

import contextlib
import socket

from .server import wait_until_serving

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(workdir: str, example_scenes: int = 2, include_photo: bool = False, **launch_kwargs):
    """Serve the web UI on a free loopback port for the duration of the block; yields ``Running``."""
    from .server import launch
    from .session import ServerConfig

    config = ServerConfig(workdir=str(workdir), example_scenes=example_scenes, include_photo=include_photo)
    running = launch(config, host=HOST, port=free_port(), **launch_kwargs)
    try:
        wait_until_serving(running.url)
        yield running
    finally:
        running.close()
