"""The layout of ``training/``: the generic modules (arguments, checkpoints, prepare, loop) do not
pull in MT-Color or L-CoIns modules when imported, and the former catch-all module of ``training/``
is gone."""

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERIC = [
    "mtcolor.training.arguments",
    "mtcolor.training.checkpoints",
    "mtcolor.training.prepare",
    "mtcolor.training.loop",
]
APPLICATION = ["mtcolor.training.mtcolor_model", "mtcolor.training.mtcolor_data", "mtcolor.training.mtcolor_export", "mtcolor.training.mtcolor_train",
               "mtcolor.training.lcoins_model", "mtcolor.training.lcoins_data", "mtcolor.training.train_lcoins", "mtcolor.models.adapter",
               "mtcolor.models.lcoins", "mtcolor.pipelines"]  # fmt: skip
#: the module split into arguments, checkpoints, prepare, loop and mtcolor_train (spelt so that
#: this file does not match itself)
REMOVED = r"training[.]common\b|from mtcolor.training import co[m]mon\b"


def test_generic_training_modules_do_not_import_the_applications():
    code = (
        "import importlib, json, sys\n"
        f"found = {{m: [a for a in {APPLICATION!r} if a in sys.modules] for m in {GENERIC!r} if importlib.import_module(m)}}\n"
        "print(json.dumps(found))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == {module: [] for module in GENERIC}


def test_nothing_imports_the_removed_catch_all_module():
    assert not (REPO / "training" / ("common.py")).exists()  # (spelt so that this file does not match)
    offenders = []
    for path in REPO.rglob("*.py"):
        if any(part.startswith(".") for part in path.relative_to(REPO).parts):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if re.search(REMOVED, text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
