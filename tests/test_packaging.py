"""What ``pip install .`` installs: one top-level package, ``mtcolor``, with the applications under it.

The repository keeps its application folders at the top (``pipelines/``, ``training/``,
``dataset_builder/``, ``webui/``, ``benchmarks/``); pyproject.toml maps each to ``mtcolor.<folder>``,
so site-packages gains no name another distribution may own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("pipelines", "training", "dataset_builder", "webui", "benchmarks")


def _setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _source_packages() -> set[str]:
    """Every folder with an ``__init__.py`` under mtcolor/ and the application folders, by installed name."""
    names = set()
    for top in ("mtcolor", *FOLDERS):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT).parts
            if "embedded" in parts or "__pycache__" in parts:
                continue
            names.add(".".join(parts if top == "mtcolor" else ("mtcolor", *parts)))
    return names


def test_every_package_folder_is_installed_under_mtcolor():
    config = _setuptools_config()
    assert set(config["packages"]) == _source_packages()
    assert all(name == "mtcolor" or name.startswith("mtcolor.") for name in config["packages"])
    assert config["package-dir"] == {f"mtcolor.{folder}": folder for folder in FOLDERS}


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory):
    """A wheel of this checkout installed (not editable) into a new virtual environment whose
    dependencies come from the running one (a ``.pth`` line; the running environment's own ``.pth``
    files, e.g. an editable install of this checkout, are not processed from there)."""
    tmp = tmp_path_factory.mktemp("install")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp / "wheel",
            ROOT,
        ]
    )
    (wheel,) = (tmp / "wheel").glob("mtcolor-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    before = set(os.listdir(site))
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel])
    added = set(os.listdir(site)) - before
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv, added


def test_fresh_install_adds_only_mtcolor(fresh_install):
    _, added = fresh_install
    assert {name for name in added if not name.endswith(".dist-info")} == {"mtcolor"}
    assert [name for name in added if name.endswith(".dist-info")] == [
        name for name in added if name.startswith("mtcolor-")
    ]


def test_fresh_install_imports_the_pipelines_and_runs_the_cli(fresh_install, tmp_path):
    venv, _ = fresh_install
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    code = (
        "import mtcolor, os, sys\n"
        "from mtcolor import MTColorPipeline, LCoInsPipeline\n"
        "from mtcolor.training import stage1\n"
        "from mtcolor.webui import app\n"
        "assert '/site-packages/mtcolor/' in mtcolor.__file__, mtcolor.__file__\n"
        "assert MTColorPipeline.__module__ == 'mtcolor.pipelines.pipeline_mtcolor'\n"
        "assert LCoInsPipeline.__module__ == 'mtcolor.pipelines.pipeline_lcoins'\n"
        "assert os.path.isfile(os.path.join(mtcolor.embedded_model('mtcolor-tiny'), 'model_index.json'))\n"
        "folders = ('pipelines', 'training', 'dataset_builder', 'webui', 'benchmarks')\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in folders]\n"
    )
    _run([venv / "bin" / "python", "-c", code], cwd=tmp_path, env=env)
    help_text = _run([venv / "bin" / "mtcolor", "--help"], cwd=tmp_path, env=env).stdout
    assert "colorize" in help_text and "demo" in help_text
