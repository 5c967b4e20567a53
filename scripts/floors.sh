#!/usr/bin/env bash
# The declared floors of the light, pure-Python dependencies are real: each is installed at the
# minimum pyproject.toml declares into a folder that shadows .venv's copies (pip resolves what
# they need beside them; torch and the other heavy packages stay .venv's own), then the tests
# that exercise them run against those versions. Run by .ci/run after the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
floors=$(mktemp -d)
trap 'rm -rf "$floors"' EXIT
pins=$(.venv/bin/python - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
light = {"click", "sqlite-utils", "fastapi", "jinja2", "python-multipart", "filelock", "tqdm", "uvicorn", "httpx"}
for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
    name, floor = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=([^,;\s]+)", spec).groups()
    if name in light:
        print(f"{name}=={floor}")
PY
)
echo "floors:" $pins
.venv/bin/python -m pip install -q --no-warn-conflicts --target "$floors" $pins
PYTHONPATH="$floors${PYTHONPATH:+:$PYTHONPATH}" .venv/bin/python - <<'PY'
import importlib.metadata as m
for name in ("click", "sqlite-utils", "fastapi", "starlette", "jinja2", "python-multipart", "filelock", "tqdm", "uvicorn", "httpx"):
    print(f"  {name} {m.version(name)}")
PY
PYTHONPATH="$floors${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m pytest -q -p no:cacheprovider \
  tests/test_cli.py tests/test_web.py tests/test_store.py tests/test_records.py tests/test_csv.py \
  tests/test_backup.py tests/test_races.py tests/test_watch.py "$@"
