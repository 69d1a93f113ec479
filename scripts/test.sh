#!/usr/bin/env bash
# Every test Rill has: formatting, lints (warnings are errors), unit, oracle and
# end-to-end tests (every CUDA kernel compiled by NVRTC for sm_80 and sm_90; GPU tests
# skip without a GPU), and real Python clients (openai, huggingface_hub, text-generation)
# against the binary. CI (.ci/run) runs
# exactly this. Needs cargo and python3 (the client virtualenvs and the NVRTC wheels in
# .cuda/ come from PyPI on first use); the fixture models are committed
# (scripts/make_fixtures.sh regenerates them).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== CUDA compile pieces (NVRTC, runtime headers, ptxas) into .cuda/"
scripts/cuda_wheels.sh
# The kernel compile test (kernels/tests/nvrtc.rs) fails instead of skipping without them.
export RILL_REQUIRE_NVRTC=1
echo "== cargo test"
cargo test --workspace --locked
echo "== Python clients (openai, huggingface_hub, text-generation) against the real binary"
scripts/python_tests.sh
