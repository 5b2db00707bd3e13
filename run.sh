#!/usr/bin/env bash
# One entry point for a fresh machine: sets up (once) a virtual environment with everything the
# project needs, then runs the main job or the test suite.
#
#   bash run.sh demo      # the main job: `mtcolor demo` on the embedded default model
#   bash run.sh test      # the test suite (what CI runs)
#   bash run.sh <cmd...>  # any command inside the environment, e.g. `bash run.sh mtcolor --help`
#
# The environment lives in $MTCOLOR_VENV (default: ~/.cache/mtcolor/venv-<hash of the dependency
# files>) so repeated runs and CI reuse it; delete the folder to rebuild it from scratch.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
py="${PYTHON:-python3}"
hash="$(cat pyproject.toml run.sh | sha256sum | cut -c1-12)"
venv="${MTCOLOR_VENV:-$HOME/.cache/mtcolor/venv-$hash}"

if [ ! -f "$venv/.ready" ]; then
    echo "[run.sh] creating the environment in $venv (first run only, a few minutes)" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    # torch and torchvision first, pinned to the builds this machine kind ships on disk
    # (segment-anything, open_clip and pyiqa need torchvision).
    "$venv/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
    "$venv/bin/python" -m pip install -q -e ".[all,test]"
    touch "$venv/.ready"
fi
# Point the editable install at this checkout (cheap; matters when several clones share the venv).
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null

export PATH="$venv/bin:$PATH"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"

cmd="${1:-demo}"
case "$cmd" in
    demo) shift || true; exec mtcolor demo "$@" ;;
    test) shift || true; exec python -m pytest -q -p no:cacheprovider "$@" ;;
    *) exec "$@" ;;
esac
