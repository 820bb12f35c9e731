#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv if it is missing (or out of date), then
#   scripts/dev.sh demo   -> the main job on the embedded default data (no download)
#   scripts/dev.sh test   -> the test suite (extra arguments go to pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MIXERZOO_VENV:-.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.mixerzoo-stamp"
want="$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[dev.sh] setting up $VENV (torch from the local disk; a few minutes the first time)" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c requirements/constraints.txt -e ".[test]"
  echo "$want" > "$STAMP"
fi
cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  demo) exec "$VENV/bin/python" -m mixerzoo.train.demo "$@" ;;
  test) exec "$VENV/bin/python" -m pytest -q "$@" ;;
  *) echo "usage: scripts/dev.sh demo|test [args...]" >&2; exit 2 ;;
esac
