#!/usr/bin/env bash
# Every test Rill has: formatting, lints (warnings are errors), unit, oracle and
# end-to-end tests. CI (.ci/run) runs exactly this. Needs only cargo: the fixture
# models are committed (scripts/make_fixtures.sh regenerates them).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
