#!/usr/bin/env bash
# Set up on a fresh machine and run one benchmark: ./scripts/bench.sh accuracy|speed [ARGS].
# The accuracy benchmark reads ../shared/data/dsb2018 beside this checkout (or --data PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[bench]'
name=${1:?usage: scripts/bench.sh accuracy|quality|speed|memory [ARGS]}
shift
exec .venv/bin/python "bench/$name.py" "$@"
