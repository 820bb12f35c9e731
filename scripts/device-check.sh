#!/usr/bin/env bash
# The prepared GPU verification run (scripts/device_check.py): kernels, families, speed, models, a train epoch.
#   bash scripts/device-check.sh [OUT_DIR] [--budget S] [--only JOBS]   on a lent GPU machine (report in $OUT)
#   bash scripts/device-check.sh --dry-run [OUT_DIR]                    the same code on the CPU (CI runs it)
# On the device machine: its own python3 (torch, triton), this tree on PYTHONPATH, no pip install; wheels that
# scripts/prepare-wheels.sh put in .whl/ (carried with the call) are unpacked into a private folder first.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
DRY=0
[[ " $* " == *" --dry-run "* ]] && DRY=1
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ "$DRY" = 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
  SITE="${TMPDIR:-/tmp}/mixerzoo-device-site"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "[device-check] warning: installing .whl/*.whl into $SITE failed; continuing with what is installed" >&2
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" -u scripts/device_check.py "$@"
