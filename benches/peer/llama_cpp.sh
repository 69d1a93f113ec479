#!/usr/bin/env bash
# Rill's CPU engine against llama.cpp on this machine, in one invocation, on the same
# weights (issue 14's peer harness). From the repository root:
#
#     bash benches/peer/llama_cpp.sh [OUT.json]
#
# 1. builds llama.cpp from the llama-cpp-python source package on PyPI (its vendored
#    tree; cmake and ninja from PyPI; -DGGML_NATIVE=ON, as a user building it would),
# 2. writes a random bf16 checkpoint of benches/models/llama-1.1b's shape and converts it
#    with llama.cpp's own convert_hf_to_gguf.py (bf16),
# 3. runs llama-bench against engine-bench (batch-1 decode, 512-token prefill; Rill in
#    its default fast precision, and again in the exact one),
# 4. runs llama-server and Rill's server, one after the other, on those weights under
#    the same rill-bench workload (OpenAI /v1/completions streaming: 1, 4 and 16
#    clients, a fixed ~64-token prompt, 64 new tokens, EOS ignored),
# 5. prints each figure with its ratio and writes them all as JSON (default:
#    benches/results/<date>-peer-llama-cpp.json).
#
# Not part of the test command (it takes ~30 minutes on 2 cores, most of it the first
# build). Work files go to target/peer (the build, the venv, ~4.5 GB of weights) and are
# reused by later runs. THREADS (default: every core), CLIENTS (default "1 4 16"),
# REQUESTS_PER_CLIENT (default 4) and LLAMA_CPP_PYTHON_VERSION can be set; STAGES
# (default "engine servers") runs one part only, and the report then holds only its
# figures (never an earlier run's).
set -euo pipefail
cd "$(dirname "$0")/../.."

export LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
THREADS=${THREADS:-$(nproc)}
CLIENTS=${CLIENTS:-"1 4 16"}
REQUESTS_PER_CLIENT=${REQUESTS_PER_CLIENT:-4}
STAGES=${STAGES:-"engine servers"}
OUT=${1:-benches/results/$(date +%F)-peer-llama-cpp.json}
WORK=target/peer
CONFIG=benches/models/llama-1.1b/config.json
mkdir -p "$WORK"
log() { echo "== $(date +%T) $*" >&2; }

# The converter's own requirements (torch for its tensor loading, transformers for the
# tokenizer), PyPI's builds of cmake and ninja, and llama.cpp's gguf package (below).
venv=.venv-peer
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
fi
"$venv/bin/pip" install -q -r benches/peer/requirements.txt
py="$venv/bin/python"

log "llama.cpp ${LLAMA_CPP_PYTHON_VERSION} (llama-cpp-python sdist)"
"$py" benches/peer/llama_cpp.py fetch "$LLAMA_CPP_PYTHON_VERSION" "$WORK/src"
LLAMA_CPP=$WORK/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp
"$venv/bin/pip" install -q "$LLAMA_CPP/gguf-py"
BUILD=$WORK/llama.cpp-build-$LLAMA_CPP_PYTHON_VERSION
if [ ! -x "$BUILD/bin/llama-server" ] || [ ! -x "$BUILD/bin/llama-bench" ]; then
    PATH="$PWD/$venv/bin:$PATH" cmake -S "$LLAMA_CPP" -B "$BUILD" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >/dev/null
    PATH="$PWD/$venv/bin:$PATH" cmake --build "$BUILD" --target llama-bench llama-server \
        -j "$(nproc)"
fi

log "weights: a random bf16 checkpoint and its GGUF"
CKPT=$WORK/llama-1.1b-bf16
GGUF=$WORK/llama-1.1b-bf16.gguf
"$py" benches/peer/llama_cpp.py checkpoint "$CONFIG" "$CKPT"
"$py" benches/peer/llama_cpp.py convert "$LLAMA_CPP" "$CKPT" "$GGUF"

log "Rill (release build)"
cargo build --release -q -p rill-router -p rill-benches --bin rill --bin engine-bench \
    --bin rill-bench

# The summary reads what this invocation measures, never an earlier run's figures.
rm -f "$WORK"/engine-bench*.json "$WORK"/llama-bench.json "$WORK"/server-*.json

if [[ " $STAGES " == *" engine "* ]]; then
    log "engine-bench vs llama-bench (batch-1 decode of 32 tokens, 512-token prefill)"
    # The server's default precision (fast), then the exact one (transformers in f32).
    for precision in fast exact; do
        suffix=${precision/fast/}
        target/release/engine-bench --config "$CONFIG" --dtype bf16 --batch 16 --prompt 512 \
            --steps 32 --reps 3 --precision "$precision" \
            --json "$WORK/engine-bench${suffix:+-$suffix}.json"
    done
    "$BUILD/bin/llama-bench" -m "$GGUF" -t "$THREADS" -p 512 -n 32 -r 3 -o json \
        >"$WORK/llama-bench.json"
fi

# One server at a time, on its own port; each is stopped before the next starts.
max_clients=$(tr ' ' '\n' <<<"$CLIENTS" | sort -n | tail -1)
wait_ready() { # url
    for _ in $(seq 600); do
        curl -sf "$1/health" >/dev/null 2>&1 && return 0
        sleep 1
    done
    echo "server at $1 never became ready" >&2
    return 1
}
serve_and_bench() { # name url command...
    local name=$1 url=$2
    shift 2
    "$@" >"$WORK/server-$name.log" 2>&1 &
    local pid=$!
    trap 'kill $pid 2>/dev/null' EXIT
    wait_ready "$url"
    for c in $CLIENTS; do
        log "$name: $c clients"
        target/release/rill-bench --api openai --url "$url" --clients "$c" \
            --requests $((c * REQUESTS_PER_CLIENT)) --prompt-tokens 64 --max-new-tokens 64 \
            --json "$WORK/server-$name-c$c.json"
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    trap - EXIT
}
if [[ " $STAGES " == *" servers "* ]]; then
    # llama.cpp: one slot per client, each with room for its prompt and answer.
    serve_and_bench llama http://127.0.0.1:3802 "$BUILD/bin/llama-server" -m "$GGUF" \
        --host 127.0.0.1 --port 3802 -t "$THREADS" -np "$max_clients" \
        -c $((max_clients * 512)) --alias llama-1.1b
    serve_and_bench rill http://127.0.0.1:3801 target/release/rill --model-id "$CKPT" \
        --hostname 127.0.0.1 --port 3801 --served-model-name llama-1.1b
fi

"$py" benches/peer/llama_cpp.py summary "$WORK" "$OUT"
