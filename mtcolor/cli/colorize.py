"""``mtcolor colorize GRAY --mask M --text T ... --out OUT.png``: colorize one gray image.

Instances come from ``--mask`` files, SAM ``--box`` / ``--point`` prompts (with ``--sam-checkpoint``)
or a ``--spec`` JSON/YAML file; each gets one ``--text`` and optionally one ``--color``, in
command-line order. ``--edit-from PREVIOUS.png`` re-colours some instances of an earlier output and
keeps every other pixel (rule: :func:`_edit_request`; a PNG output gets its edit state beside it,
:mod:`mtcolor.cli._edit_state`). Every input is
checked before the model is loaded (numbers must be finite, images at most ``--max-pixels`` and
non-empty, within the working-size limits, masks that still own a pixel once overlaps are resolved,
the output folder writable), and the output is written to a temporary file in the output's
directory (``.OUT.<pid>@<host>.<token>.tmp``, reserved before the model loads) and renamed at the end,
so a failed run never leaves a partial ``OUT`` behind; the temporaries of killed runs are removed by
the next run.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ._colorize_spec import (
    Instance,
    command_line_instances,
    load_spec,
    spec_instances,
)
from ._edit_state import load_sidecar, sidecar_path, write_sidecar

_MASK_MODES = ("1", "L", "I;16", "I", "F")
_DEFAULTS = {"guidance_scale": 7.5, "alpha": 0.2, "beta": 0.2, "color_steering": 0.0}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
#: Default of ``--max-pixels``: where Pillow itself refuses an image as a decompression bomb.
DEFAULT_MAX_PIXELS = 2 * 89_478_485


class _AppendInstance(argparse.Action):
    """Append ``(kind, value)`` to one shared list so --mask/--box/--point keep their command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest) or [])
        items.append((self.const, values))
        setattr(namespace, self.dest, items)


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "colorize",
        help="colorize a gray image from instance masks / SAM prompts and texts",
        description="Colorize one gray image from instance masks (or SAM box/point prompts) and instance texts. "
        "Inputs are checked before the model loads; OUT is written atomically. See docs/cli.md.",
    )
    parser.add_argument(
        "image", nargs="?", metavar="GRAY", help="gray image (any size, 8/16-bit; colour -> its luminance)"
    )
    parser.add_argument(
        "--out", required=True, metavar="OUT", help="output image path (format from its extension)"
    )
    group = parser.add_argument_group("instances (one --text per --mask/--box/--point, in the same order)")
    group.add_argument(
        "--mask",
        dest="instances",
        action=_AppendInstance,
        const="mask",
        metavar="M.png",
        help="instance mask image aligned with GRAY (white, > 50%%, = instance)",
    )
    group.add_argument(
        "--box",
        dest="instances",
        action=_AppendInstance,
        const="box",
        metavar="x0,y0,x1,y1",
        help="SAM box prompt in GRAY's pixels (needs --sam-checkpoint)",
    )
    group.add_argument(
        "--point",
        dest="instances",
        action=_AppendInstance,
        const="point",
        metavar="x,y[;x,y...]",
        help="SAM foreground point(s) of one instance in GRAY's pixels (needs --sam-checkpoint; quote the ';')",
    )
    group.add_argument(
        "--text", dest="texts", action="append", metavar="TEXT", help='instance text, e.g. "a red car"'
    )
    group.add_argument(
        "--color",
        dest="colors",
        action="append",
        metavar="COLOR",
        help='exact colour of the instance: "#d0302a", "rgb(208,48,42)" or a name ("crimson", "navy blue"); '
        '"none" = no explicit colour. Either no --color or one per instance, in the same order',
    )
    group.add_argument(
        "--spec",
        metavar="SPEC",
        help="JSON/YAML file with image, prompt and instances (paths relative to it)",
    )
    group.add_argument("--sam-checkpoint", metavar="PATH", help="local Segment Anything checkpoint (.pth)")
    group.add_argument(
        "--sam-model-type", default="vit_b", choices=("vit_b", "vit_l", "vit_h"), help="SAM size"
    )
    colors = parser.add_argument_group("colour targets (docs/colors.md)")
    colors.add_argument(
        "--no-colors-from-texts",
        dest="colors_from_texts",
        action="store_false",
        help='do not take a target from a text naming one colour ("a crimson apple"); only --color counts',
    )
    colors.add_argument(
        "--color-steering",
        type=float,
        default=_DEFAULTS["color_steering"],
        metavar="S",
        help="strength of the steering toward the targets during sampling (default 0 = off; 1 = the calibrated strength)",
    )
    colors.add_argument(
        "--no-exact-colors",
        dest="exact_colors",
        action="store_false",
        help="keep the model's (steered) colours instead of aligning each target's main colour after decoding",
    )
    edits = parser.add_argument_group("edits: re-colour instances of an earlier output (docs/cli.md)")
    edits.add_argument(
        "--edit-from",
        metavar="PREVIOUS",
        help="an earlier output of GRAY: pixels outside the edited instances keep their exact values",
    )
    edits.add_argument(
        "--edit-instance",
        dest="edit_instances",
        action="append",
        metavar="K[,K...]",
        help="instance(s) to change, numbered from 1 in command-line (or spec) order; default: see docs/cli.md",
    )
    edits.add_argument(
        "--no-edit-state",
        dest="use_edit_state",
        action="store_false",
        help="ignore PREVIOUS's edit state (PREVIOUS.edit.safetensors) and encode the image instead",
    )
    parser.add_argument("--prompt", help="global text prompt (overrides the spec's)")
    parser.add_argument("--negative-prompt", help="negative prompt (overrides the spec's)")
    parser.add_argument(
        "--model", help="MTColorPipeline folder or hub id (default: the embedded mtcolor-tiny)"
    )
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    parser.add_argument(
        "--guidance-scale", type=float, default=7.5, help="classifier-free guidance (default 7.5)"
    )
    parser.add_argument("--alpha", type=float, default=0.2, help="share of instance-sampling steps in [0, 1]")
    parser.add_argument("--beta", type=float, default=0.2, help="global latent weight in the fusion (>= 0)")
    parser.add_argument(
        "--fusion", default="paper", choices=("paper", "normalized", "no_crop"), help="fusion rule"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: random)")
    parser.add_argument("--working-resolution", type=int, default=512, help="short side the model runs at")
    parser.add_argument(
        "--no-preserve-luminance",
        dest="preserve_luminance",
        action="store_false",
        help="return the decoded image instead of GRAY's own L + predicted colour",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"refuse GRAY / masks with more pixels (decompression-bomb guard; default {DEFAULT_MAX_PIXELS:,})",
    )
    return parser


# ----------------------------------------------------------------------------------------------------
# Parsing and validation (no model loaded)
# ----------------------------------------------------------------------------------------------------


def _check_options(args) -> None:
    for flag in ("guidance_scale", "alpha", "beta", "color_steering"):
        value = getattr(args, flag)
        if not math.isfinite(value):
            name = "--" + flag.replace("_", "-")
            raise ValueError(f"{name} is {value}; pass a finite number (e.g. {name} {_DEFAULTS[flag]}).")
    if args.max_pixels < 1:
        raise ValueError(
            f"--max-pixels is {args.max_pixels}; pass a positive pixel count (default {DEFAULT_MAX_PIXELS})."
        )
    if args.steps < 1:
        raise ValueError(f"--steps is {args.steps}; pass a positive number of denoising steps (e.g. 50).")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha is {args.alpha}; it is a share of the steps, pass a value in [0, 1].")
    if args.beta < 0:
        raise ValueError(f"--beta is {args.beta}; pass a weight >= 0.")
    if args.color_steering < 0:
        raise ValueError(
            f"--color-steering is {args.color_steering}; pass a strength >= 0 (0 = off, the default; e.g. 1)."
        )
    if args.guidance_scale < 0:
        raise ValueError(
            f"--guidance-scale is {args.guidance_scale}; pass a value >= 0 (<= 1 disables guidance)."
        )
    if args.working_resolution < 8:
        raise ValueError(
            f"--working-resolution is {args.working_resolution}; pass a short side >= 8 (e.g. 512)."
        )


def _output_format(out: str) -> str:
    import PIL.Image

    PIL.Image.init()
    extension = os.path.splitext(out)[1].lower()
    image_format = PIL.Image.registered_extensions().get(extension)
    if image_format is None or image_format not in PIL.Image.SAVE:
        raise ValueError(
            f"--out {out!r} has extension {extension!r}, which Pillow cannot write; use .png, .jpg or .tif."
        )
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--out {out!r}: directory {directory!r} does not exist; create it first.")
    if os.path.isdir(out):
        raise ValueError(
            f"--out {out!r} is a directory; pass a file name such as {os.path.join(out, 'color.png')!r}."
        )
    return image_format


def _open_image(path: str, flag: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Open and decode an image, refusing more than ``max_pixels`` pixels before decoding it; an EXIF
    orientation is applied (:func:`mtcolor.image_io.upright`), so sizes are those viewers show."""
    import PIL.Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path!r} does not exist.")
    limit = PIL.Image.MAX_IMAGE_PIXELS
    PIL.Image.MAX_IMAGE_PIXELS = None  # the size is checked below against --max-pixels instead
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(path)
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(
                    f"{flag} {path!r} is {width}x{height} = {width * height:,} pixels, more than the limit of "
                    f"{max_pixels:,} (a guard against decompression bombs); pass --max-pixels {width * height} "
                    "to allow it, or downscale the image."
                )
            if width < 1 or height < 1:
                raise ValueError(
                    f"{flag} {path!r} is empty ({width}x{height} pixels); pass a non-empty image."
                )
            image.load()
    except (PIL.UnidentifiedImageError, OSError, PIL.Image.DecompressionBombError) as err:
        raise ValueError(f"{flag} {path!r} is not a readable image: {err}") from err
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = limit
    from mtcolor.image_io import upright

    return upright(image)  # a phone photo's EXIF orientation applied: as viewers show it


def _flag_names(message: str, instances: list[Instance], rows: list[int]) -> str:
    """Name the command line's flags (``--mask #2``) where a library message names ``masks[1]`` (the
    index into the mask files ``rows``); a message that starts with one mask also gives its path."""
    first = re.match(r"masks\[(\d+)\]", message)
    if first:
        instance = instances[rows[int(first.group(1))]]
        message = f"{instance.where}: mask {instance.mask!r}{message[first.end() :]}"

    def name(match) -> str:
        return ", ".join(instances[rows[int(i)]].where for i in match.group(1).split(","))

    return re.sub(r"masks\[(\d+(?:,\s*\d+)*)\]", name, message)


def _check_masks(masks: list, instances: list[Instance], size: tuple[int, int]) -> None:
    """The mask files as the pipeline will check them, before any model loads
    (:func:`mtcolor.inputs.instance_label_map`): each has a pixel above 50%, and each still owns a
    pixel once overlaps are resolved (the same mask twice leaves the second with none)."""
    from mtcolor.inputs import instance_label_map

    rows = [i for i, mask in enumerate(masks) if mask is not None]
    if not rows:
        return
    try:
        instance_label_map([masks[i] for i in rows], size, warn_overlap=False)
    except ValueError as err:
        raise ValueError(_flag_names(str(err), instances, rows)) from err


@dataclass
class EditRequest:
    """A checked ``--edit-from``: the previous image, its edit state (None: it is encoded), the
    0-based instances to change (None: those whose text, colour or mask changed) and notes to print."""

    image: object
    state: object = None
    instances: list[int] | None = None
    notes: list[str] = field(default_factory=list)


def _edit_instances(values: list[str], count: int) -> list[int]:
    """``--edit-instance`` values (``"2"``, ``"1,3"``; numbered from 1) -> sorted 0-based indices."""
    chosen = set()
    for value in values:
        for part in value.split(","):
            try:
                k = int(part.strip())
            except ValueError:
                k = 0
            if not 1 <= k <= count:
                raise ValueError(
                    f"--edit-instance {value!r}: this call has {count} instance(s), numbered 1..{count} in "
                    "command-line (or spec) order; pass one of them, e.g. --edit-instance 1."
                )
            chosen.add(k - 1)
    return sorted(chosen)


def _edit_request(args, instances: list[Instance], size: tuple[int, int]) -> EditRequest | None:
    """Check ``--edit-from`` / ``--edit-instance`` before the model loads and decide what to edit:

    1. ``--edit-instance K`` given: instances K (from 1, in command-line or spec order);
    2. else, when PREVIOUS has a matching edit state (written beside it by an earlier run, for the
       same number of instances): the instances whose text, colour target or mask changed;
    3. else (a plain image): every instance of this call, so give the masks of the objects to
       re-colour only.
    """
    if args.edit_from is None:
        if args.edit_instances:
            raise ValueError("--edit-instance needs --edit-from PREVIOUS (the earlier output to edit).")
        return None
    if not instances:
        raise ValueError(
            "--edit-from needs the instances to re-colour: pass --mask M.png --text TEXT for each (see docs/cli.md)."
        )
    previous = _open_image(args.edit_from, "--edit-from", args.max_pixels)
    if previous.size != size:
        raise ValueError(
            f"--edit-from {args.edit_from!r} is {previous.size[0]}x{previous.size[1]} but GRAY is "
            f"{size[0]}x{size[1]} (W x H); edit an output of this same GRAY."
        )
    chosen = _edit_instances(args.edit_instances, len(instances)) if args.edit_instances else None
    edit = EditRequest(previous, instances=chosen)
    if args.use_edit_state:
        state, why = load_sidecar(args.edit_from, previous)
        if state is not None and len(state.texts) != len(instances):
            state, why = None, f"its edit state has {len(state.texts)} instances, this call {len(instances)}"
        edit.state = state
        if state is None:
            edit.notes.append(f"--edit-from {args.edit_from!r}: {why}; the image is encoded.")
    if edit.instances is None and edit.state is None:
        edit.instances = list(range(len(instances)))
    return edit


def _reserve_output(out: str) -> Path:
    """Create the temporary file that will become ``out`` (proves the folder is writable before the
    model loads) after removing the temporaries of ``out`` left by killed runs."""
    from mtcolor.locks import remove_dead_temporaries, temporary_path

    directory = os.path.dirname(os.path.abspath(out))
    remove_dead_temporaries(directory, name=os.path.basename(out))
    tmp = temporary_path(os.path.abspath(out))
    try:
        with open(tmp, "xb"):
            pass
    except OSError as err:
        raise OSError(
            f"--out {out!r}: cannot create a file in {directory!r} ({err.strerror or err}); pass --out in a "
            "writable folder."
        ) from err
    return tmp


def _resolve_model(model: str | None) -> str:
    if model is None:
        import importlib.util

        if importlib.util.find_spec("mtcolor.embedded") is None:
            raise ValueError(
                "--model is required: this installation has no embedded default model (mtcolor-tiny) yet; pass "
                "--model PATH, a folder written by MTColorPipeline.save_pretrained."
            )
        import mtcolor

        return os.fspath(mtcolor.embedded_model("mtcolor-tiny"))
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "model_index.json")):
            raise ValueError(
                f"--model {model!r} has no model_index.json; pass a folder written by MTColorPipeline.save_pretrained."
            )
        return model
    if os.path.exists(model) or not _HUB_ID.fullmatch(model):
        raise FileNotFoundError(f"--model {model!r} is neither a pipeline folder nor a hub id (owner/name).")
    return model


def _device(requested: str | None) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device is 'cuda' but PyTorch sees no CUDA device; use --device cpu.")
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------------------------


def _write_atomically(image, tmp: Path, out: str, image_format: str) -> None:
    """Save ``image`` into the reserved temporary file ``tmp``, fsync it and rename it onto ``out``
    (the caller deletes ``tmp`` when this fails)."""
    from mtcolor.locks import fsync_directory

    with open(tmp, "wb") as stream:
        image.save(stream, format=image_format)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, out)
    fsync_directory(os.path.dirname(os.path.abspath(out)))


def _colorize(args) -> int:
    # 1. Collect the request (command line or spec file)
    _check_options(args)
    image_path, prompt, negative_prompt = args.image, args.prompt, args.negative_prompt
    if args.spec is not None:
        if args.instances or args.texts or args.colors:
            raise ValueError(
                "--spec is given together with --mask/--box/--point/--text/--color; put the instances either in "
                "the spec file or on the command line."
            )
        spec = load_spec(args.spec)
        instances = spec_instances(spec, args.spec)
        if image_path is None and spec.get("image") is not None:
            image_path = os.path.join(os.path.dirname(os.path.abspath(args.spec)), os.fspath(spec["image"]))
        prompt = prompt if prompt is not None else spec.get("prompt")
        negative_prompt = negative_prompt if negative_prompt is not None else spec.get("negative_prompt")
    else:
        instances = command_line_instances(args)
    if image_path is None:
        raise ValueError('no input image: pass GRAY (or "image" in --spec).')

    # 2. Check every file and prompt before loading any model
    image_format = _output_format(args.out)
    image = _open_image(image_path, "GRAY", args.max_pixels)
    width, height = image.size
    from mtcolor.inputs import working_size

    working_size((height, width), args.working_resolution, name="GRAY")  # the limits the pipeline applies
    masks: list = [None] * len(instances)
    for i, instance in enumerate(instances):
        if instance.mask is None:
            continue
        mask = _open_image(instance.mask, f"{instance.where}:", args.max_pixels)
        if mask.size != image.size:
            raise ValueError(
                f"{instance.where}: mask {instance.mask!r} is {mask.size[0]}x{mask.size[1]} but GRAY is "
                f"{width}x{height} (W x H); masks must be aligned with the gray image."
            )
        masks[i] = mask if mask.mode in _MASK_MODES else mask.convert("L")
    sam_rows = [i for i, instance in enumerate(instances) if instance.mask is None]
    if sam_rows:
        from mtcolor.sam import check_prompts

        if args.sam_checkpoint is None:
            first = instances[sam_rows[0]].where
            raise ValueError(
                f"{first} is a SAM prompt but --sam-checkpoint is missing; pass a local SAM checkpoint "
                "(see docs/cli.md) or give a --mask instead."
            )
        if not os.path.isfile(args.sam_checkpoint):
            raise FileNotFoundError(
                f"--sam-checkpoint {args.sam_checkpoint!r} does not exist; download an official checkpoint from "
                "https://github.com/facebookresearch/segment-anything#model-checkpoints and pass its local path."
            )
        sam_points = [instances[i].points for i in sam_rows]
        sam_boxes = [instances[i].box for i in sam_rows]
        try:
            check_prompts(sam_points, sam_boxes, height, width)
        except ValueError as err:  # name the flag instead of the internal index
            index = int(m.group(1)) if (m := re.search(r"\[(\d+)\]", str(err))) else 0
            raise ValueError(f"{instances[sam_rows[index]].where}: {err}") from err
    _check_masks(masks, instances, (height, width))
    edit = _edit_request(args, instances, image.size)
    model = _resolve_model(args.model)
    device = _device(args.device)
    tmp = _reserve_output(args.out)
    try:
        for note in edit.notes if edit else []:
            print(note)
        result = _generate(args, image, masks, instances, prompt, negative_prompt, model, device, edit)
        colorized = result.images[0]

        # 5. Write atomically (into the reserved temporary file, then renamed onto OUT), then the
        #    edit state beside a PNG (what --edit-from OUT.png needs to skip re-encoding)
        _write_atomically(colorized, tmp, args.out, image_format)
    finally:
        tmp.unlink(missing_ok=True)
    _write_edit_state(result, args.out, image_format)
    for line in _color_lines(result.diagnostics, instances):
        print(line)
    print(f"wrote {args.out} ({colorized.size[0]}x{colorized.size[1]})")
    return 0


def _write_edit_state(result, out: str, image_format: str) -> None:
    """``OUT.edit.safetensors`` beside a PNG output (atomically); other formats change pixels when
    saved, so they get none (and a stale one of the same name is removed)."""
    from mtcolor.locks import temporary_path

    sidecar = sidecar_path(out)
    if image_format != "PNG" or not result.edit_states:
        sidecar.unlink(missing_ok=True)
        return
    tmp = temporary_path(os.path.abspath(sidecar))
    try:
        write_sidecar(tmp, result.edit_states[0], result.images[0])
        os.replace(tmp, sidecar)
    finally:
        tmp.unlink(missing_ok=True)


def _color_lines(diagnostics: list[dict], instances: list[Instance]) -> list[str]:
    """One line per colour-target finding, naming the instance by its flag."""
    lines = []
    for item in diagnostics:
        kind, i = item.get("kind"), item.get("instance")
        if kind not in ("color_target", "no_color_target", "color_target_unreachable") or i is None:
            continue
        name = f"{instances[i].where} ({instances[i].text!r})" if 0 <= i < len(instances) else f"instance {i}"
        if kind == "color_target":
            lines.append(f"{name}: colour target {item['target']} ({item['label']}, from {item['source']})")
        elif kind == "no_color_target":
            lines.append(f"{name}: no colour target ({item['reason']})")
        else:
            lines.append(
                f"{name}: colour target not applied ({item.get('reason', 'no pixel at the working size')})"
            )
    return lines


def _generate(
    args, image, masks: list, instances: list[Instance], prompt, negative_prompt, model, device, edit=None
):
    """Steps 3-4 of :func:`_colorize` (inputs already checked): SAM masks, then the pipeline; returns
    its ``MTColorPipelineOutput``."""
    # 3. SAM masks for the box/point instances
    sam_rows = [i for i, instance in enumerate(instances) if instance.mask is None]
    if sam_rows:
        from mtcolor.sam import SamMasker

        masker = SamMasker(args.sam_checkpoint, args.sam_model_type, device=device)
        sam_masks = masker.masks(
            image,
            boxes=[instances[i].box for i in sam_rows],
            points=[instances[i].points for i in sam_rows],
        )
        del masker  # free the SAM weights before the pipeline loads
        for i, mask in zip(sam_rows, sam_masks):
            masks[i] = mask

    # 4. Load the pipeline and colorize (the pipeline shows its own progress bar)
    import torch

    from mtcolor import MTColorPipeline

    pipe = MTColorPipeline.from_pretrained(model).to(device)
    generator = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
    colors = [instance.color for instance in instances]
    edit_from = None
    if edit is not None:
        from mtcolor.pipelines.pipeline_mtcolor import MTColorPipelineOutput

        edit_from = edit.image
        if edit.state is not None:
            edit_from = MTColorPipelineOutput(images=[edit.image], edit_states=[edit.state])
    try:
        return pipe(
            image,
            masks=masks or None,
            texts=[instance.text for instance in instances] or None,
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            alpha=args.alpha,
            beta=args.beta,
            fusion=args.fusion,
            working_resolution=args.working_resolution,
            generator=generator,
            preserve_luminance=args.preserve_luminance,
            output_type="pil",
            colors=colors if any(c is not None for c in colors) else None,
            colors_from_texts=args.colors_from_texts,
            color_steering=args.color_steering,
            exact_colors=args.exact_colors,
            edit_from=edit_from,
            edit_instances=None if edit is None else edit.instances,
        )
    except ValueError as err:
        if edit is not None and edit.state is not None and str(err).startswith("edit_from cannot be edited"):
            raise ValueError(
                f"--edit-from {args.edit_from!r}: {err} (add --no-edit-state to encode the image)"
            ) from err
        raise


def run(args: argparse.Namespace) -> int:
    """Colorize; user errors (bad input, missing files or packages) print one line and return 2,
    Ctrl-C prints one line and returns 130 (no OUT and no temporary file are left)."""
    try:
        return _colorize(args)
    except (ValueError, TypeError, OSError, ImportError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"mtcolor colorize: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mtcolor colorize: interrupted; {args.out} was not written", file=sys.stderr)
        return 128 + signal.SIGINT
