#!/usr/bin/env bash
# Set up on a fresh machine and run the main job on the sample data: a virtual environment in
# .venv, the package, then enrol data/specimens and query data/queries in ./demo-db.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
sid() { .venv/bin/specimen-id --db demo-db "$@"; }
echo "== enrol every folder of data/specimens as a specimen"
sid enroll --folders data/specimens --meta source=dsb2018
echo "== query new captures of enrolled specimens, and of two never enrolled"
sid query data/queries/*.jpg
echo "== the database"
sid info
