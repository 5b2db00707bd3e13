"""``mtcolor ui``: the web UI (a gradio page over the pipelines, see ``docs/ui.md``).

Binds 127.0.0.1 unless ``--host`` says otherwise. Needs the ``ui`` extra: ``pip install "mtcolor[ui]"``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

INSTALL_HINT = 'the web UI needs gradio: install it with `pip install "mtcolor[ui]"`.'


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "ui",
        help="serve the web UI (gradio) over MTColorPipeline / LCoInsPipeline",
        description="Serve a web page to colorize images: upload or paint instance masks, type their colours, "
        "compare before/after and download the PNG. Binds 127.0.0.1 unless --host says otherwise. See docs/ui.md.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="TCP port (default: the first free one from 7860)"
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="a saved MTColorPipeline / LCoInsPipeline folder added to the model menu (first; the embedded "
        "mtcolor-tiny and lcoins-tiny are always offered)",
    )
    parser.add_argument(
        "--sam_checkpoint",
        "--sam-checkpoint",
        dest="sam_checkpoint",
        default=None,
        metavar="PATH",
        help="local Segment Anything checkpoint (.pth): enables SAM box/point prompts in the page",
    )
    parser.add_argument(
        "--sam_model_type",
        "--sam-model-type",
        dest="sam_model_type",
        default="vit_b",
        choices=("vit_b", "vit_l", "vit_h"),
        help="architecture of the SAM checkpoint (default vit_b)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cpu")
    parser.add_argument(
        "--queue_size", type=int, default=16, help="most requests waiting in the queue (default 16)"
    )
    parser.add_argument(
        "--max_file_size", default="25mb", help='largest upload, e.g. "25mb" (default) or a number of bytes'
    )
    return parser


def _check(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("gradio") is None:
        raise ImportError(INSTALL_HINT)
    if args.port is not None and not 0 < args.port < 65536:
        raise ValueError(f"--port is {args.port}; pass a TCP port in 1..65535.")
    if args.queue_size < 1:
        raise ValueError(f"--queue_size is {args.queue_size}; pass at least 1.")
    if args.model is not None and not os.path.isdir(args.model):
        raise FileNotFoundError(f"--model {args.model!r} is not a folder; pass a saved pipeline folder.")
    if args.sam_checkpoint is not None and not os.path.isfile(args.sam_checkpoint):
        raise FileNotFoundError(
            f"--sam_checkpoint {args.sam_checkpoint!r} does not exist; pass the path of a local SAM checkpoint."
        )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; user errors (bad flags, missing gradio) print one line and return 2."""
    try:
        _check(args)
        from mtcolor.webui.server import launch
        from mtcolor.webui.session import ServerConfig

        config = ServerConfig(
            model=args.model,
            sam_checkpoint=args.sam_checkpoint,
            sam_model_type=args.sam_model_type,
            device=args.device,
        )
        print("mtcolor ui: loading the model and the examples ...", flush=True)
        max_file_size = int(args.max_file_size) if args.max_file_size.isdigit() else args.max_file_size
        launch(
            config,
            host=args.host,
            port=args.port,
            queue_size=args.queue_size,
            max_file_size=max_file_size,
            block=True,
            on_ready=lambda url: print(f"mtcolor ui: serving on {url} (Ctrl+C stops it)", flush=True),
        )
    except KeyboardInterrupt:
        return 0
    except (ValueError, OSError, ImportError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"mtcolor ui: error: {message}", file=sys.stderr)
        return 2
    return 0
