#!/usr/bin/env bash
# Regenerate the oracle fixtures under integration-tests/fixtures/models.
# Makes its own virtualenv (.venv-fixtures); PyPI's torch is a CUDA build (~3 GB of
# nvidia wheels) but runs on the CPU, which is all this needs. Tests never run this:
# the fixtures are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-fixtures
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
fi
"$venv/bin/pip" install -q -r scripts/fixtures-requirements.txt
"$venv/bin/python" scripts/make_fixtures.py "$@"
