#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the pure-Python and manylinux cp312 wheels that the lent GPU machine lacks, so
# scripts/device-check.sh can run there with no network. The machine's python3 is 3.12 with its own torch,
# triton, numpy, scipy, opencv-python-headless, huggingface_hub and PyYAML; it has no albumentations (and none of
# its pydantic/albucore stack), and its timm may differ from the pinned 1.0.31.
#   bash scripts/prepare-wheels.sh            # here, with network; then carry ".whl" with the device call
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
# name==version, one version each (two versions of one name stop the whole install on the machine)
WHEELS=(
  timm==1.0.31
  albumentations==2.0.8
  albucore==0.0.24
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
  stringzilla==5.3.2
  simsimd==6.5.16
)
mkdir -p .whl
rm -f .whl/*.whl
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${WHEELS[@]}"
ls -1 .whl
du -sh .whl
