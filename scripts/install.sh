#!/bin/sh
# Creates .venv and installs the project with its test extras. Idempotent.
set -eu
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
