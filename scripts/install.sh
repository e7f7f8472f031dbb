#!/bin/sh
# Creates .venv and installs the project with its test extras. Idempotent.
set -eu
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
# Debian's chromium for the consent-page browser test (Playwright drives it; no browser download).
# Needs root; without it the test skips with its reason.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
            || echo "install.sh: chromium could not be installed; the browser test will skip" >&2
    else
        echo "install.sh: chromium missing (install it with apt-get as root); the browser test will skip" >&2
    fi
fi
