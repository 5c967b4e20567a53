#!/usr/bin/env bash
# Set up on a fresh machine and run the whole test suite: a virtual environment in .venv, the
# package with its test extras, then pytest (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
exec .venv/bin/python -m pytest "$@"
