#!/usr/bin/env bash
# Record the embedding oracle (transformers' final hidden states, mean pooling, and
# sentence-transformers' own pooled outputs for the qwen2 fixture, which this makes a
# sentence-transformers model directory) beside the committed fixture models. Uses the
# fixtures' virtualenv (.venv-fixtures, see make_fixtures.sh) plus sentence-transformers.
# Run it again after make_fixtures.sh, which rewrites the model directories. Tests never
# run this: the outputs are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/fixtures_venv.sh scripts/embedding-fixtures-requirements.txt
"$venv/bin/python" scripts/make_embedding_fixtures.py "$@"
