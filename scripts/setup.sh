#!/usr/bin/env bash
# Set up a fresh machine: Debian's Fashion-MNIST package, a Python venv in .venv, nondeep with its dev extras,
# and the test suite of the installed timm (its source distribution, unpacked in .third_party/, git-ignored),
# which tests/test_timm_suite.py runs against nondeep's models.
# Safe to run again: each step is skipped or fast when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
TIMM_VERSION="$(.venv/bin/python -c 'import timm; print(timm.__version__)')"
if [ ! -f ".third_party/timm-$TIMM_VERSION/tests/test_models.py" ]; then
  mkdir -p .third_party
  .venv/bin/python -m pip download -q --no-deps --no-binary :all: "timm==$TIMM_VERSION" -d .third_party
  tar -xzf ".third_party/timm-$TIMM_VERSION.tar.gz" -C .third_party
fi
