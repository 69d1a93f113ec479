#!/usr/bin/env bash
# Train the bundled demo model (models/demo) and its oracle reference; see
# scripts/make_demo_model.py. Installs the Debian packages its text comes from
# (python3.11-doc, wordnet-base, bible-kjv, wamerican for the word-list score) and
# reuses the fixtures' virtualenv (.venv-fixtures, torch + transformers).
# ~25 minutes on 2 CPU cores. Tests never run this: the model is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(python3.11-doc wordnet-base bible-kjv bible-kjv-text wamerican)
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${packages[@]}"
fi
source scripts/fixtures_venv.sh scripts/fixtures-requirements.txt
"$venv/bin/python" scripts/make_demo_model.py "$@"
