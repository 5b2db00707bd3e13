"""docs/architecture.md's "Equations -> functions" table names functions that exist and that run.

The table is parsed from the document: every backticked dotted name (``mtcolor.``, ``pipelines.``,
``training.``) of a row must resolve to a function or method, and must be called on every path of
the row's "runs in" column: a tiny MT-Color pipeline call, one tiny MT-Color stage-2 training step
(stage 2 runs every MT-Color module), a tiny L-CoIns pipeline call, one tiny L-CoIns training step.
Calls are observed with a profile hook (the code objects that ran), so the check does not depend on
how callers import the functions.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import threading
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TABLE_HEADING = "## Equations -> functions"
PATHS = ("MT-Color call", "MT-Color training", "L-CoIns call", "L-CoIns training")
NAME = re.compile(r"`((?:mtcolor|pipelines|training)\.[A-Za-z_][\w.]*)`")


def equation_rows() -> list[tuple[str, list[str], list[str]]]:
    """``(equation, qualified names, paths)`` for every row of the table."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert TABLE_HEADING in text, f"docs/architecture.md has no {TABLE_HEADING!r} section"
    rows = []
    for line in text.split(TABLE_HEADING, 1)[1].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 3 or cells[0] in ("equation", "---"):
            continue
        paths = [path.strip() for path in cells[2].split(",")]
        rows.append((cells[0], NAME.findall(cells[1]), paths))
    return rows


def resolve(qualified: str):
    """The object a dotted name denotes: the longest importable module prefix, then attributes."""
    parts = qualified.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(qualified)


def code_of(qualified: str):
    obj = inspect.unwrap(resolve(qualified))
    assert inspect.isfunction(obj), f"{qualified} is a {type(obj).__name__}, not a function or method"
    return obj.__code__


class CalledCode:
    """The code objects of every Python function called inside the ``with`` block (all threads)."""

    def __init__(self):
        self.codes: set = set()

    def _hook(self, frame, event, arg):
        if event == "call":
            self.codes.add(frame.f_code)

    def __enter__(self) -> CalledCode:
        threading.setprofile(self._hook)
        sys.setprofile(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        sys.setprofile(None)
        threading.setprofile(None)


def test_table_is_well_formed():
    rows = equation_rows()
    equations = [row[0] for row in rows]
    assert len(rows) >= 9, equations
    for equation, names, paths in rows:
        assert names, f"row {equation!r} names no function"
        unknown = [path for path in paths if path not in PATHS]
        assert not unknown, f"row {equation!r}: unknown paths {unknown}; use {PATHS}"


@pytest.mark.parametrize("qualified", sorted({name for _, names, _ in equation_rows() for name in names}))
def test_every_named_function_exists(qualified):
    code_of(qualified)


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _scene():
    gray = np.random.RandomState(0).rand(40, 48).astype(np.float32)
    first, second = np.zeros((40, 48), bool), np.zeros((40, 48), bool)
    first[:20, :24], second[24:, 28:] = True, True
    return gray, [first, second], ["a red car", "a blue cat"]


def mtcolor_call(tmp_path):
    from mtcolor import MTColorPipeline
    from mtcolor.testing import randomize_adapter, tiny_components

    components = tiny_components(0, tokenizer_cache=str(tmp_path / "tokenizer"))
    randomize_adapter(components["adapter"], seed=1, gate=0.5, scale=0.05)
    pipe = MTColorPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    gray, masks, texts = _scene()
    with CalledCode() as called:
        pipe(
            gray,
            masks,
            texts,
            prompt="a street",
            num_inference_steps=5,
            working_resolution=64,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        )
    return called.codes


def mtcolor_training(tmp_path):
    from diffusers import StableDiffusionPipeline
    from mtcolor.dataset_builder.synthetic import SyntheticConfig, build_synthetic
    from mtcolor.training import stage2

    from mtcolor.testing import randomize_adapter, tiny_components

    parts = tiny_components(0, tokenizer_cache=str(tmp_path / "tokenizer"))
    base = {name: parts[name] for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    StableDiffusionPipeline(
        **base, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(tmp_path / "base")
    randomize_adapter(parts["adapter"], seed=1, gate=0.5, scale=0.1)
    parts["adapter"].save_pretrained(tmp_path / "adapter")
    parts["controlnet"].save_pretrained(tmp_path / "controlnet")
    build_synthetic(tmp_path / "data", 2, SyntheticConfig(image_size=64), seed=0, shard_size=2)
    arguments = {
        "pretrained_model_name_or_path": tmp_path / "base",
        "adapter_name_or_path": tmp_path / "adapter",
        "controlnet_model_name_or_path": tmp_path / "controlnet",
        "train_data": tmp_path / "data",
        "output_dir": tmp_path / "stage2",
        "cache_dir": tmp_path / "cache",
        "resolution": 64,
        "train_batch_size": 2,
        "max_train_steps": 1,
        "report_to": "none",
        "num_validation_samples": 0,
    }
    argv = [str(item) for key, value in arguments.items() for item in (f"--{key}", value)]
    _reset_accelerate()
    try:
        with CalledCode() as called:
            stage2.main(stage2.parse_args(argv))
    finally:
        _reset_accelerate()
    return called.codes


def _lcoins_parts():
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mtcolor.models.lcoins import LCOINS_PRESETS, LCoInsModel, minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=24,
    )
    return LCoInsModel(**LCOINS_PRESETS["tiny"]).eval(), BertModel(config).eval(), tokenizer


def lcoins_call(tmp_path):
    from mtcolor import LCoInsPipeline

    model, text_encoder, tokenizer = _lcoins_parts()
    pipe = LCoInsPipeline(model=model, text_encoder=text_encoder, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    with CalledCode() as called:
        pipe(PIL.Image.fromarray((_scene()[0] * 255).astype(np.uint8)), "a red car", output_type="pt")
    return called.codes


def lcoins_training(tmp_path):
    import json

    from mtcolor.training import train_lcoins

    colours = [(220, 30, 30), (30, 40, 220)]
    (tmp_path / "train").mkdir()
    pairs = []
    for index, (front, back) in enumerate([(0, 1), (1, 0)]):
        image = np.zeros((40, 48, 3), np.uint8)
        image[:] = colours[back]
        image[8:30, 10:36] = colours[front]
        PIL.Image.fromarray(image).save(tmp_path / "train" / f"{index}.png")
        pairs.append([f"{index}.png", f"a {('red', 'blue')[front]} box on a {('red', 'blue')[back]} wall"])
    (tmp_path / "cap-img-pairs_train.json").write_text(json.dumps(pairs))
    arguments = {
        "train_data": tmp_path,
        "output_dir": tmp_path / "out",
        "model_config": "tiny",
        "text_encoder_config": "tiny",
        "train_batch_size": 2,
        "max_train_steps": 1,
        "report_to": "none",
        "seed": 0,
    }
    argv = [str(item) for key, value in arguments.items() for item in (f"--{key}", value)]
    _reset_accelerate()
    try:
        with CalledCode() as called:
            train_lcoins.main(train_lcoins.parse_args(argv))
    finally:
        _reset_accelerate()
    return called.codes


RUNS = {
    "MT-Color call": mtcolor_call,
    "MT-Color training": mtcolor_training,
    "L-CoIns call": lcoins_call,
    "L-CoIns training": lcoins_training,
}


@pytest.mark.parametrize("path", PATHS)
def test_named_functions_run_on_their_paths(path, tmp_path):
    rows = [(equation, names) for equation, names, paths in equation_rows() if path in paths]
    assert rows, f"no row of the table claims {path!r}"
    with torch.random.fork_rng():
        called = RUNS[path](tmp_path)
    missing = [
        f"{equation}: {name}" for equation, names in rows for name in names if code_of(name) not in called
    ]
    assert not missing, f"named in docs/architecture.md for {path!r} but not called there: {missing}"
