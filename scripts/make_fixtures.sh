#!/usr/bin/env bash
# Regenerate the oracle fixtures under integration-tests/fixtures/models.
# Makes its own virtualenv (.venv-fixtures, scripts/fixtures_venv.sh). Tests never
# run this: the fixtures are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/fixtures_venv.sh scripts/fixtures-requirements.txt
"$venv/bin/python" scripts/make_fixtures.py "$@"
