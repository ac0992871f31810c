#!/bin/sh
# Builds a virtualenv for running the worker from requirements.lock: exact versions, every file
# checked against its sha256 (pip's hash-checking mode), then the project itself with no network.
#   usage: scripts/install-venv.sh VENV_DIR        (PYTHON=python3.11 to choose the interpreter)
# Used by systemd/install.sh and the Dockerfile. pyproject.toml keeps version ranges; the lock is
# regenerated with pip-tools (docs/deploying.md, "Reproducible installs").
set -eu
VENV=${1:?usage: install-venv.sh VENV_DIR}
SRC=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "install-venv: Python 3.11 or newer is needed (set PYTHON=...)" >&2; exit 1; }
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --no-cache-dir --require-hashes --no-deps -r "$SRC/requirements.lock"
# The lock holds the build backend too, so the project builds offline and reproducibly. It is
# built from a copy: setuptools leaves build/ and *.egg-info behind in the tree it builds.
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
cp -R "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/config" "$SRC/transitions" "$SRC/worker" "$BUILD/"
"$VENV/bin/python" -m pip install --quiet --no-cache-dir --no-deps --no-build-isolation --no-index "$BUILD"
"$VENV/bin/python" -m pip check
