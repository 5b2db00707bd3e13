"""``mtcolor demo``: the README's main command (see :mod:`mtcolor.demo`)."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="colorize held-out synthetic scenes and a real photo with the embedded model",
        description="Colorize held-out synthetic scenes (incl. unseen colour-object pairs and recolour requests) "
        "and a real photo; write a contact sheet PNG and a metrics JSON.",
    )
    parser.add_argument("--out", default="mtcolor-demo", help="output folder (default: ./mtcolor-demo)")
    parser.add_argument(
        "--model", default=None, help="MT-Color pipeline folder (default: the embedded model)"
    )
    parser.add_argument("--scenes", type=int, default=4, help="held-out synthetic scenes (default 4)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="classifier-free guidance (default: the value the model's recipe measured best, else 7.5)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    parser.add_argument("--no-photo", action="store_true", help="skip the real photo")
    return parser


def _check_args(args: argparse.Namespace) -> str | None:
    """The first user error of the arguments (checked before the model loads), or None."""
    import math
    import os

    if args.steps < 1:
        return f"--steps is {args.steps}; pass a positive number of denoising steps (e.g. 20)."
    if args.scenes < 1:
        return f"--scenes is {args.scenes}; pass a positive number of synthetic scenes (e.g. 4)."
    if args.guidance_scale is not None and (
        not math.isfinite(args.guidance_scale) or args.guidance_scale < 0
    ):
        return (
            f"--guidance_scale is {args.guidance_scale}; pass a finite value >= 0 (<= 1 disables guidance), or "
            "leave it unset for the model's measured best."
        )
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return f"--out {args.out!r} is a file; pass a folder for the contact sheet and metrics."
    return None


def run(args: argparse.Namespace) -> int:
    import sys

    from mtcolor.demo import run_demo

    problem = _check_args(args)
    if problem is not None:
        print(f"mtcolor demo: error: {problem}", file=sys.stderr)
        return 2
    summary = run_demo(
        args.out,
        model=args.model,
        num_scenes=args.scenes,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        include_photo=not args.no_photo,
        guidance_scale=args.guidance_scale,
    )
    if not summary["trained"]:
        print("NOTE: no embedded model in this install; ran tiny UNTRAINED components (colours are random).")
    print(f"model: {summary['model']}")
    print(f"colour adherence on synthetic scenes: {summary['synthetic_adherence']:.0%}")
    print(f"contact sheet: {summary['contact_sheet']}")
    print(f"metrics: {summary['metrics_file']}")
    return 0
