#!/usr/bin/env bash
# Set up gaia_gym in a virtual environment: ./scripts/setup.sh [EXTRAS]   (default EXTRAS=dev)
#
# - installs torch==2.13.0 first (a CPU build where no GPU is present and the CPU wheel is at hand;
#   set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to force CPU wheels elsewhere), then
#   gaia_gym itself in editable mode with the requested extras (sim, agents, video, dev);
# - never leaves a half-made environment: the venv is marked ready only after every step succeeded,
#   a failed or interrupted setup deletes it, and a venv without the mark is rebuilt from scratch;
# - rerunning on a ready venv only refreshes the editable install (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS="${1:-dev}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
READY="$VENV/.gaia_gym_ready"
PIP_FLAGS=(-q --disable-pip-version-check)

say() { printf '[setup] %s\n' "$*"; }

if [ -f "$READY" ] && [ "$(cat "$READY")" = "$EXTRAS" ]; then
  "$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" --no-deps -e . >/dev/null
  say "environment $VENV is ready (extras: $EXTRAS)"
  exit 0
fi

if [ -d "$VENV" ] && [ ! -f "$READY" ]; then
  say "removing an unfinished environment at $VENV"
  rm -rf "$VENV"
fi

fresh=0
if [ ! -d "$VENV" ]; then
  fresh=1
  trap 'status=$?; if [ $status -ne 0 ] && [ $fresh = 1 ]; then echo "[setup] failed; removing the half-made $VENV" >&2; rm -rf "$VENV"; fi' EXIT
  trap 'exit 130' INT TERM
  say "creating $VENV with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" --upgrade pip >/dev/null
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    say "installing $TORCH_SPEC from $TORCH_INDEX_URL"
    "$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
  else
    say "installing $TORCH_SPEC"
    "$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" "$TORCH_SPEC"
  fi
fi

say "installing gaia_gym[$EXTRAS]"
"$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" -e ".[$EXTRAS]"
"$VENV/bin/python" -c "import torch, gaia_gym; print('[setup] torch', torch.__version__, '| cuda' if torch.cuda.is_available() else '| cpu', '| gaia_gym', gaia_gym.__version__)"
echo "$EXTRAS" > "$READY"
say "done: activate with 'source $VENV/bin/activate' or call $VENV/bin/gaia-gym"
