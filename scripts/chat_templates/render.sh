#!/usr/bin/env bash
# Regenerate integration-tests/fixtures/chat_templates/renderings.json: every template in
# integration-tests/fixtures/chat_templates/templates/ rendered by transformers on a fixed set
# of conversations (see render.py). Makes its own virtualenv (.venv-chat-templates, a few
# hundred MB, no torch). Tests never run this: the renderings are committed, and
# `cargo test -p rill-router --lib chat_template` compares Rill's renderings with them.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=.venv-chat-templates
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
fi
"$venv/bin/pip" install -q -r scripts/chat_templates/requirements.txt
"$venv/bin/python" scripts/chat_templates/render.py "$@"
