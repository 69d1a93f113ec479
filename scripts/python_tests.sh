#!/usr/bin/env bash
# Real Python clients against the real `rill` binary: huggingface_hub's
# InferenceClient (TGI routes, the Inference API, chat_completion), `requests` as the
# Inference API documentation writes it, Triton's `tritonclient[http]`, TGI's own
# `text-generation` client, which pins huggingface_hub < 1.0 and so gets a virtualenv
# of its own, the official `openai` SDK, and schemathesis against the OpenAPI
# document. The virtualenvs are
# made here (from PyPI) on first use and reused after.
set -euo pipefail
cd "$(dirname "$0")/.."
# The binary `cargo test` builds for the router's integration tests (after
# scripts/test.sh's `cargo test --workspace` this builds nothing; a plain `cargo build`
# would rebuild everything in the dev profile).
cargo test --locked -q -p rill-router --no-run
export RILL_BIN="$PWD/target/debug/rill"

# The demo model's word-list test reads SCOWL's American English list (Debian's
# `wamerican`); install it where it is missing.
if [ ! -r /usr/share/dict/american-english ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q wamerican >/dev/null 2>&1 ||
        { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q wamerican >/dev/null; }
fi

run() { # venv, packages...
    local venv=$1
    shift
    # (Re)install when the venv is new or its package list changed.
    if [ ! -x "$venv/bin/pytest" ] || [ "$(cat "$venv/.rill-packages" 2>/dev/null)" != "$*" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check pytest "$@"
        echo "$*" >"$venv/.rill-packages"
    fi
    "$venv/bin/pytest" -q -W ignore::DeprecationWarning integration-tests/python
}

run .venv-client-hub "huggingface_hub>=1.0,<3" "numpy>=1.24" "jsonschema>=4,<5" "requests>=2.31,<3" "tritonclient[http]>=2.40,<3" \
    "kubernetes-validate==1.37.0" "pyyaml>=6,<7" "pyzmq>=26,<28" "msgpack>=1,<2"
run .venv-client-tgi "text-generation==0.7.0"
run .venv-client-openai "openai>=1.60,<3" "jsonschema>=4,<5"
run .venv-client-schemathesis "schemathesis==4.32.5"
