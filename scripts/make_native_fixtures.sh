#!/usr/bin/env bash
# Record transformers running the 16-bit fixture models in their own dtype (the fast
# precision's oracle: scripts/make_native_fixtures.py). Makes its own virtualenv
# (.venv-fixtures, scripts/fixtures_venv.sh). Tests never run this: the output is
# committed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/fixtures_venv.sh scripts/fixtures-requirements.txt
"$venv/bin/python" scripts/make_native_fixtures.py "$@"
