#!/usr/bin/env bash
# Every test Rill has: formatting, lints (warnings are errors), unit, oracle and
# end-to-end tests, and real Python clients against the binary. CI (.ci/run) runs
# exactly this. Needs cargo and python3 (the client virtualenvs are made from PyPI
# on first use); the fixture models are committed (scripts/make_fixtures.sh
# regenerates them).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== Python clients (huggingface_hub, text-generation) against the real binary"
scripts/python_tests.sh
