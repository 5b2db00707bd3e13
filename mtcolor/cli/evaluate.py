"""``mtcolor evaluate``: the papers' metrics plus colour adherence and bleeding, as one table.

Example::

    mtcolor evaluate --pred ours=out/mtcolor --pred ddcolor=out/ddcolor --gt data/test_gt \\
        --records data/gptcolor --split test --weights-dir ~/weights --clip-weights ~/clip-vit-b-32 \\
        --out eval/

prints the Markdown table and writes ``<out>/metrics.json`` and ``<out>/metrics.md``.
"""

from __future__ import annotations

import argparse

_WEIGHT_OPTIONS = (
    # (option, settings key, help)
    ("--musiq-weights", "musiq", "MUSIQ-KonIQ checkpoint (musiq_koniq_ckpt-e95806b9.pth)"),
    ("--maniqa-weights", "maniqa", "MANIQA-KonIQ checkpoint (ckpt_koniq10k.pt)"),
    ("--topiq-weights", "topiq_nr", "TOPIQ-NR checkpoint (cfanet_nr_koniq_res50-9a73138b.pth)"),
    ("--lpips-weights", "lpips", "LPIPS v0.1 AlexNet linear layers (LPIPS_v0.1_alex-df73285e.pth)"),
    ("--lpips-backbone-weights", "lpips_backbone", "torchvision AlexNet weights (alexnet-owt-7be5be79.pth)"),
    ("--fid-weights", "fid", "FID Inception weights (pt_inception-2015-12-05-6726825d.pth)"),
    ("--clip-weights", "clip", "open_clip model folder (open_clip_config.json + weights) or state-dict file"),
)


def _prediction(value: str) -> tuple[str, str]:
    """``NAME=DIR`` -> (NAME, DIR); a plain ``DIR`` (even one containing "=" after a "/") -> ("", DIR)."""
    name, sep, folder = value.partition("=")
    return (name, folder) if sep and name and "/" not in name else ("", value)


#: The metric names of :data:`mtcolor.metrics.evaluation.METRICS` (repeated here so that building the
#: parser does not import torch; a test keeps the two equal).
METRICS = (
    "colorfulness", "psnr", "ssim", "fid", "niqe", "musiq", "maniqa", "topiq_nr", "lpips",
    "clip_score", "instance_clip_score", "adherence", "bleeding", "color_error",
)  # fmt: skip


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="score folders of colorizations (MT-Color Table I metrics, CLIP-scores, adherence, bleeding, "
        "deltaE00 to colour targets)",
        description=(
            "Score predicted colorizations against ground truths. Predictions and ground truths are matched by "
            "file stem, records (masks + instance texts) by record id == file stem. Metrics whose weights are "
            "not available locally are listed as skipped with the file to provide; nothing is downloaded."
        ),
    )
    parser.add_argument(
        "--pred", action="append", required=True, type=_prediction, metavar="[NAME=]DIR",
        help="folder of predictions (repeat for several methods; NAME defaults to the folder name)",
    )  # fmt: skip
    parser.add_argument("--gt", help="folder of ground-truth images (default: the records' images)")
    parser.add_argument(
        "--records", help="dataset-builder record dataset (masks, instance texts, global text)"
    )
    parser.add_argument("--split", help="split of --records (default: train, or the only split)")
    parser.add_argument("--out", default="evaluation", help="output folder for metrics.json / metrics.md")
    parser.add_argument(
        "--metrics", default=",".join(METRICS),
        help=f"comma-separated subset of: {', '.join(METRICS)} (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--resize", choices=("pred", "gt"), default="pred",
        help="pred: resize ground truths (and masks) to each prediction, as MT-Color does for 256-px methods "
        "(default); gt: resize predictions to the ground truth",
    )  # fmt: skip
    parser.add_argument("--weights-dir", help="folder searched for the standard weight file names")
    for option, _, text in _WEIGHT_OPTIONS:
        parser.add_argument(option, metavar="PATH", help=text)
    parser.add_argument(
        "--clip-model", help="open_clip architecture when --clip-weights is a file (e.g. ViT-B-32)"
    )
    parser.add_argument(
        "--clip-fill", choices=("mean", "black", "keep"), default="mean",
        help="instance crops: what replaces box pixels outside the instance (default: CLIP's mean gray)",
    )  # fmt: skip
    parser.add_argument(
        "--tolerance", type=float, default=20.0, help="colour-adherence tolerance in Lab units"
    )
    parser.add_argument("--band", type=int, help="colour-bleeding band in pixels (default: short side / 64)")
    parser.add_argument(
        "--color-targets", default="texts", metavar="texts|colors|FILE",
        help="targets of the colour error (CIEDE2000 per instance): 'texts' = the colour each instance text "
        "names (default), 'colors' = the records' instance_colors, or a JSON file {record id: [colour or null "
        "per instance]} ('#d0302a', 'rgb(208, 48, 42)', [208, 48, 42] or a colour name)",
    )  # fmt: skip
    parser.add_argument(
        "--color-threshold", type=float, default=5.0, help="deltaE00 pass threshold of the colour error"
    )
    parser.add_argument(
        "--device", help="device for the learned metrics (default: cuda if available, else cpu)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _unreadable_images(folder: str, limit: int = 5) -> list[str]:
    """Up to ``limit`` "name (reason)" entries for the image files of ``folder`` that do not decode.

    Every file is opened and fully decoded once, so one truncated or corrupt file is reported by name
    before any metric runs instead of ending the evaluation in a traceback.
    """
    import warnings

    import PIL.Image

    from mtcolor.metrics.evaluation import list_images

    bad = []
    for path in list_images(folder).values():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
                with PIL.Image.open(path) as image:
                    image.load()
        except (
            Exception
        ) as error:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
            bad.append(f"{path.name} ({' '.join(str(error).split()) or type(error).__name__})")
            if len(bad) >= limit:
                break
    return bad


def _check_out(out: str) -> str | None:
    """``--out`` must be a folder this process can write (checked before the evaluation runs)."""
    import os

    from mtcolor.locks import temporary_path

    if os.path.exists(out) and not os.path.isdir(out):
        return f"--out {out!r} is a file; pass a folder for metrics.json and metrics.md."
    try:
        os.makedirs(out, exist_ok=True)
        probe = temporary_path(os.path.join(out, "metrics.json"))
        with open(probe, "xb"):
            pass
        probe.unlink()
    except OSError as error:
        return f"--out {out!r}: cannot write there ({error.strerror or error}); pass a writable folder."
    return None


def _check_inputs(args, predictions: dict[str, str]) -> str | None:
    """The first user error of the arguments (non-finite numbers, unreadable image files), or None."""
    import math
    import os

    if not math.isfinite(args.tolerance) or args.tolerance <= 0:
        return (
            f"--tolerance is {args.tolerance}; pass a finite colour distance > 0 in Lab units (default 20)."
        )
    if args.band is not None and args.band < 1:
        return f"--band is {args.band}; pass a band width >= 1 pixel, or leave it unset (short side / 64)."
    if not math.isfinite(args.color_threshold) or args.color_threshold <= 0:
        return f"--color-threshold is {args.color_threshold}; pass a finite deltaE00 > 0 (default 5)."
    if args.color_targets not in ("texts", "colors") and not os.path.isfile(args.color_targets):
        return (
            f"--color-targets {args.color_targets!r} is neither 'texts', 'colors' nor a file; pass one of those "
            'or a JSON file such as {"scene0": ["#d0302a", null]}.'
        )
    out_problem = _check_out(args.out)
    if out_problem is not None:
        return out_problem
    folders = [(f"--pred {name}={folder}", folder) for name, folder in predictions.items()]
    if args.gt is not None:
        folders.append((f"--gt {args.gt}", args.gt))
    for flag, folder in folders:
        bad = _unreadable_images(folder)
        if bad:
            return (
                f"{flag}: unreadable image file(s): {'; '.join(bad)}; re-generate or remove them (files are "
                "matched by stem, so a removed prediction is simply not scored)."
            )
    return None


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from mtcolor.metrics.evaluation import EvaluationSettings, evaluate, format_markdown, to_json

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    predictions = {}
    for name, folder in args.pred:
        name = name or Path(folder).resolve().name
        if name in predictions:
            print(
                f"error: two --pred folders are named {name!r}; name them with --pred NAME=DIR.",
                file=sys.stderr,
            )
            return 2
        predictions[name] = folder
    try:
        problem = _check_inputs(args, predictions)
    except ValueError as error:  # a --pred / --gt that is not a folder
        problem = str(error)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.gt is None and args.records is None:
        print("note: neither --gt nor --records given: only no-reference metrics can run.", file=sys.stderr)
    weights = {key: getattr(args, option[2:].replace("-", "_")) for option, key, _ in _WEIGHT_OPTIONS}
    settings = EvaluationSettings(
        metrics=metrics,
        resize=args.resize,
        weights={k: v for k, v in weights.items() if v},
        weights_dir=args.weights_dir,
        clip_model=args.clip_model,
        clip_fill=args.clip_fill,
        tolerance=args.tolerance,
        band=args.band,
        device=args.device,
        progress=not args.no_progress,
        color_targets=args.color_targets,
        color_threshold=args.color_threshold,
    )
    try:
        report = evaluate(
            predictions,
            args.gt,
            args.records,
            args.split,
            settings,
            log=lambda message: print(f"warning: {message}", file=sys.stderr),
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from mtcolor.locks import atomic_write_bytes

    table = format_markdown(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        out / "metrics.json", (json.dumps(to_json(report), indent=2, allow_nan=False) + "\n").encode()
    )
    atomic_write_bytes(out / "metrics.md", table.encode())
    print(table)
    print(f"wrote {out / 'metrics.json'} and {out / 'metrics.md'}")
    return 0
