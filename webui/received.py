"""Which files a request may make the server read: only those gradio itself received or produced.

The page's handlers take gradio's raw file values (``preprocess=False``, so that every error reads
well), and a raw HTTP client can put any path in them (``{"path": "/home/me/private.png"}`` without
gradio's ``meta``, which gradio then passes on unchecked). :class:`ReceivedFiles` accepts a path only
when it is one of the files gradio keeps for this server: the uploads it received (``/upload``) and
the files it cached for the page's outputs (examples, painted masks, results), i.e. the sets
``gr.Blocks.temp_file_sets`` lists. Anything else is refused with one message that names the field
and does not say whether the path exists, is readable or is an image.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from .inputs import file_path

#: the refusal of a file this server did not receive (the same whether the path exists or not)
NOT_RECEIVED = "{name} is not a file uploaded to this page (or it has expired); upload it again."


class ReceivedFiles:
    """The gate in front of every file a page handler reads.

    Args:
        file_sets: returns the current sets of file paths gradio received or produced for this server
            (``lambda: demo.temp_file_sets``); read at every check, as uploads keep arriving and
            gradio's cache clean-up removes expired ones.
    """

    def __init__(self, file_sets: Callable[[], Iterable[set]]):
        self._file_sets = file_sets

    def received(self, path: str) -> bool:
        """Whether gradio received or produced ``path`` for this server (exact path, as it handed it out)."""
        return any(path in files for files in list(self._file_sets()))

    def check(self, value, name: str) -> str | None:
        """The path of a file value (a path, or a dict / ``FileData`` with one) the server may read;
        None for None.

        Raises:
            ValueError: :data:`NOT_RECEIVED` naming ``name``, for anything gradio did not receive or
                produce here (another file of the server, a missing path, not a path at all).
        """
        if value is None:
            return None
        path = file_path(value)
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str) or not self.received(path):
            raise ValueError(NOT_RECEIVED.format(name=name))
        return path

    def check_rows(self, image, masks: list) -> tuple[str | None, list[str | None]]:
        """:meth:`check` of the input image and every instance row's mask (``masks[k - 1]`` is row k's)."""
        return self.check(image, "the input image"), [
            self.check(mask, f"instance {row}'s mask") for row, mask in enumerate(masks, start=1)
        ]


__all__ = ["NOT_RECEIVED", "ReceivedFiles"]
