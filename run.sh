#!/usr/bin/env bash
# One entry point for a fresh machine: sets up (once) a virtual environment with everything the
# project needs, then runs the main job or the test suite.
#
#   bash run.sh demo      # the main job: `mtcolor demo` on the embedded default model
#   bash run.sh test      # the test suite (what CI runs; installs Debian's chromium for the browser tests)
#   bash run.sh ui        # the web UI (`mtcolor ui`) on 127.0.0.1
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

# One set-up at a time: runs started together (e.g. the recipe beside a test run) wait here for the
# first one's install instead of racing pip on the same folder.
mkdir -p "$(dirname "$venv")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$venv.lock"
    flock 9
fi
if [ ! -f "$venv/.ready" ]; then
    echo "[run.sh] creating the environment in $venv (first run only, a few minutes)" >&2
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    # torch and torchvision first, pinned to the builds this machine kind ships on disk
    # (segment-anything, open_clip and pyiqa need torchvision).
    "$venv/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
    "$venv/bin/python" -m pip install -q -e ".[all,test]"
    touch "$venv/.ready"
fi
# Point the editable install at this checkout when another clone of the same dependencies used the
# venv last (several clones share it).
if [ "$(cat "$venv/.checkout" 2>/dev/null)" != "$here" ]; then
    "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
    echo "$here" >"$venv/.checkout"
fi
if command -v flock >/dev/null 2>&1; then
    flock -u 9
    exec 9>&-
fi

export PATH="$venv/bin:$PATH"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"

# Browser tests (the web UI's) drive Debian's Chromium through playwright; install the package when it
# is missing (never a browser download: playwright's own builds cannot be fetched offline).
ensure_chromium() {
    if command -v chromium >/dev/null 2>&1; then return 0; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[run.sh] installing Debian's chromium for the browser tests (first run only)" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "[run.sh] chromium is missing: install Debian's 'chromium' package (as root) for the browser tests" >&2
    fi
}

cmd="${1:-demo}"
case "$cmd" in
    demo) shift || true; exec mtcolor demo "$@" ;;
    test) shift || true; ensure_chromium; exec python -m pytest -q -p no:cacheprovider "$@" ;;
    ui) shift || true; exec mtcolor ui "$@" ;;
    *) exec "$@" ;;
esac
