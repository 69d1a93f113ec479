#!/usr/bin/env bash
# Prove that deploy/container/Containerfile builds and runs with podman from Debian's
# own packages, on a Debian 12 machine that reaches only Debian's mirrors and the
# language registries (crates.io), not docker.io or any other container registry.
#
# The two base images the Containerfile names cannot be pulled there, so stand-ins are
# made locally and passed as build args:
#   localhost/rill-proof/debian:bookworm-slim  debootstrap --variant=minbase, trimmed
#   localhost/rill-proof/rust:<ver>-slim-bookworm  the same plus gcc/libc6-dev/ca-certificates
#                                              and this machine's active Rust toolchain,
#                                              laid out as the official rust image is
#                                              (cargo/rustc on PATH, CARGO_HOME=/usr/local/cargo)
# Then it builds localhost/rill:cpu (cargo fetches crates from crates.io inside the
# build) and runs it twice, as the Kubernetes Deployment does (read-only root, /tmp a
# tmpfs, no capabilities, the model mounted read-only, the manifest's arguments) and
# bare (no mount, no arguments: the demo model), checking health, generation, the
# user, the read-only root and that SIGTERM ends it with status 0.
#
# Needs root (debootstrap, podman's storage) and some minutes: not part of the test
# command. Re-running reuses the base images and the build cache; --clean removes
# everything it made (containers, images, build caches, the work directory) and exits.
#
#   scripts/container_proof.sh 2>&1 | tee deploy/container/proof-$(date +%F).log
#
# Environment: RILL_PROOF_WORK (work directory, default /var/tmp/rill-proof),
# RILL_PROOF_PORT (first of two host ports, default 18080), RILL_PROOF_MIRROR (Debian
# mirror), CARGO_BUILD_JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

WORK=${RILL_PROOF_WORK:-/var/tmp/rill-proof}
MIRROR=${RILL_PROOF_MIRROR:-http://deb.debian.org/debian}
PORT=${RILL_PROOF_PORT:-18080}
DEMO_PORT=$((PORT + 1))
JOBS=${CARGO_BUILD_JOBS:-2}
SUITE=bookworm
BASE=localhost/rill-proof/debian:bookworm-slim
# Seen by the functions step runs in a child bash.
export REPO WORK MIRROR SUITE BASE
IMAGE=localhost/rill:cpu
# The Kubernetes-like run and the bare one; only these containers are ever removed.
CTR_MODEL=rill-proof-model
CTR_DEMO=rill-proof-demo
# The demo model's greedy continuation, as README.md quotes it.
DEMO_PROMPT="The little dog"
DEMO_TEXT=" was a good man. The children were in the house. The children of the children were in the land. The children of the children of Israel were"

RESULTS=()
START=$(date +%s)
log() { printf '\n=== %s  [%s]\n' "$*" "$(date -u +%H:%M:%S)"; }
pass() { RESULTS+=("PASS  $1"); echo "PASS: $1"; }
fail() { RESULTS+=("FAIL  $1"); echo "FAIL: $1"; }
skip() { RESULTS+=("SKIP  $1"); echo "SKIP: $1"; }

summary() {
    local rc=$? failed=0
    for r in "${RESULTS[@]}"; do [[ $r == FAIL* ]] && failed=1; done
    ((rc == 0)) || failed=1
    echo
    echo "=== summary ($(( $(date +%s) - START )) s)"
    printf '  %s\n' "${RESULTS[@]}"
    if ((failed)); then echo "RESULT: FAIL"; else echo "RESULT: PASS"; fi
    # Leave nothing running; the images stay for the next run.
    podman rm -f -t 5 "$CTR_MODEL" "$CTR_DEMO" >/dev/null 2>&1 || true
    ((failed == 0)) || exit 1
}

# A step the rest depends on: `step NAME SECONDS CMD...` runs CMD under a timeout and
# stops the proof if it fails.
step() {
    local name=$1 limit=$2 t0 rc=0
    shift 2
    log "$name"
    echo "+ $*"
    t0=$(date +%s)
    if declare -F "$1" >/dev/null; then
        # A function of this script: run it in a child bash that has them all.
        timeout --kill-after=30 "$limit" bash -c \
            "set -euo pipefail; $(declare -f); $(printf '%q ' "$@")" || rc=$?
    else
        timeout --kill-after=30 "$limit" "$@" || rc=$?
    fi
    if ((rc == 0)); then
        pass "$name ($(( $(date +%s) - t0 )) s)"
    else
        ((rc == 124)) && echo "timed out after $limit s"
        fail "$name (exit $rc after $(( $(date +%s) - t0 )) s)"
        exit 1
    fi
}

# A check that does not stop the proof: `check NAME CMD...`.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}

need_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "container_proof: run as root (debootstrap and podman's root storage)" >&2
        exit 2
    fi
}

# --- --clean -------------------------------------------------------------------------

clean() {
    need_root
    log "clean"
    [[ -f $WORK/containers.conf ]] && export CONTAINERS_CONF=$WORK/containers.conf
    podman rm -f -t 5 "$CTR_MODEL" "$CTR_DEMO" 2>/dev/null || true
    for img in "$IMAGE" "$BASE" $(podman images --format '{{.Repository}}:{{.Tag}}' \
        | grep '^localhost/rill-proof/rust:' || true); do
        podman rmi -f "$img" 2>/dev/null && echo "removed $img" || true
    done
    # The untagged images these builds leave (the build stage, kept as the layer cache,
    # and earlier builds' images): those whose history builds in /opt/rill. Not a
    # blanket prune: other projects' images on the machine are left alone.
    for id in $(podman images --filter dangling=true --format '{{.ID}}'); do
        if podman history --no-trunc --format '{{.CreatedBy}}' "$id" 2>/dev/null \
            | grep -q 'WORKDIR /opt/rill'; then
            podman rmi -f "$id" >/dev/null 2>&1 && echo "removed untagged image $id" || true
        fi
    done
    # The RUN --mount=type=cache directories (cargo registry and target/): buildah keeps
    # them in its cache directory under TMPDIR, named by id.
    for dir in "${TMPDIR:-/var/tmp}"/buildah-cache*/; do
        [[ -d $dir ]] || continue
        for id in rill-cargo-registry rill-target; do
            [[ -e $dir$id ]] && rm -rf "$dir$id" && echo "removed $dir$id"
        done
    done
    rm -rf "$WORK" && echo "removed $WORK"
}

if [[ ${1:-} == --clean ]]; then
    clean
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--clean]" >&2
    exit 2
fi

need_root
trap summary EXIT

# --- the machine ---------------------------------------------------------------------

log "machine"
date -u +'%Y-%m-%dT%H:%M:%SZ'
grep PRETTY_NAME /etc/os-release
uname -r
lscpu | grep -E '^(Model name|CPU\(s\)|Architecture):'
free -h | head -2
# Who signs the registry's certificate as seen from here (a TLS-intercepting proxy shows
# up as a local CA).
echo "crates.io certificate issuer:" \
    "$(timeout 10 openssl s_client -connect index.crates.io:443 -servername index.crates.io \
        </dev/null 2>/dev/null | sed -n 's/^issuer=//p' || echo '?')"
echo "repository: $REPO at $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "($(git status --porcelain 2>/dev/null | wc -l) uncommitted paths)"

# crun, podman's default runtime in Debian 12, refuses a cgroup v1 host that also mounts
# the v2 hierarchy ("cgroups in hybrid mode not supported"), as this VM does; runc
# (also Debian's) runs there.
hybrid_cgroups=0
if [[ $(stat -fc %T /sys/fs/cgroup) != cgroup2fs ]] && grep -q ' cgroup2 ' /proc/mounts; then
    hybrid_cgroups=1
fi
tools=(podman buildah debootstrap curl python3)
((hybrid_cgroups)) && tools+=(runc)
missing=()
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    pkgs=("${missing[@]/python3/python3-minimal}")
    step "apt-get install ${pkgs[*]}" 900 bash -c \
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ${pkgs[*]}"
else
    pass "${tools[*]} already installed"
fi
dpkg-query -W podman buildah debootstrap crun runc conmon netavark 2>/dev/null || true
podman --version
buildah --version

# This proof's own containers.conf (CONTAINERS_CONF replaces the system's for these
# commands only; nothing under /etc is changed), for what this machine needs:
# - runc instead of crun on hybrid cgroups (above);
# - rlimits the container can be given. Rootful podman asks for RLIMIT_NOFILE and
#   RLIMIT_NPROC of 1048576 in every container (and lowers its own RLIMIT_NPROC to
#   32768 first); raising a limit past the caller's hard limit needs CAP_SYS_RESOURCE,
#   which root here does not have (hard RLIMIT_NOFILE 20000), so every `podman run` and
#   every RUN of a build failed with "setrlimit `RLIMIT_NOFILE`: Operation not
#   permitted". The containers get the caller's hard limits instead.
mkdir -p "$WORK"
conf=$WORK/containers.conf
cap_resource=$(( (0x$(awk '/^CapEff/ {print $2}' /proc/self/status) >> 24) & 1 ))
{
    echo "# written by scripts/container_proof.sh for this machine"
    if ((cap_resource == 0)); then
        nofile=$(ulimit -Hn); ((nofile > 1048576)) && nofile=1048576
        nproc=$(ulimit -Hu); [[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
        echo "[containers]"
        echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
    fi
    if ((hybrid_cgroups)); then
        echo "[engine]"
        echo 'runtime = "runc"'
    fi
} >"$conf"
export CONTAINERS_CONF=$conf
echo "CONTAINERS_CONF=$conf (CAP_SYS_RESOURCE: $cap_resource, hybrid cgroups: $hybrid_cgroups):"
sed 's/^/  /' "$conf"
echo "storage driver: $(podman info --format '{{.Store.GraphDriverName}}')," \
    "network backend: $(podman info --format '{{.Host.NetworkBackend}}')," \
    "OCI runtime: $(podman info --format '{{.Host.OCIRuntime.Name}}')," \
    "cgroups: $(podman info --format '{{.Host.CgroupsVersion}}')"

# --- base images ---------------------------------------------------------------------

# Debian slim's trimming: no package caches or lists (apt-get update restores them), no
# documentation but the copyright files, no man pages or translations.
trim_rootfs() {
    local root=$1
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
        "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/log/apt/* \
        "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
        "$root"/usr/share/lintian "$root"/usr/share/linda
    find "$root"/usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
    find "$root"/usr/share/doc -mindepth 1 -type d -empty -delete
}

# debootstrap into WORK/NAME (a partial tree from an interrupted run is redone).
bootstrap() {
    local name=$1 include=${2:-}
    local root=$WORK/$name
    rm -rf "$root"
    mkdir -p "$WORK"
    debootstrap --variant=minbase ${include:+--include=$include} "$SUITE" "$root" "$MIRROR"
}

# Import a root filesystem as an image; the tree is deleted after (the image is what is
# reused).
import_rootfs() {
    local root=$1 tag=$2
    shift 2
    tar --numeric-owner -C "$root" -c . | podman import "$@" - "$tag"
    rm -rf "$root"
}

make_base() {
    bootstrap debian-slim
    trim_rootfs "$WORK/debian-slim"
    import_rootfs "$WORK/debian-slim" "$BASE" --change 'CMD ["bash"]' \
        --message "debootstrap --variant=minbase $SUITE $MIRROR, trimmed"
}

if podman image exists "$BASE"; then
    pass "base image $BASE exists (reused)"
else
    step "make the base image $BASE" 1200 make_base
fi

# The active toolchain (rustup's), copied without its documentation.
RUSTC=$(command -v rustc || echo "$HOME/.cargo/bin/rustc")
SYSROOT=$("$RUSTC" --print sysroot)
RUST_VERSION=$("$RUSTC" --version | awk '{print $2}')
BUILDER=localhost/rill-proof/rust:$RUST_VERSION-slim-bookworm
export SYSROOT RUST_VERSION BUILDER
echo "toolchain: $("$RUSTC" --version) at $SYSROOT"

make_builder() {
    local root=$WORK/rust
    bootstrap rust ca-certificates,gcc,libc6-dev
    trim_rootfs "$root"
    # The machine's own certificate authorities (Debian's place for local ones), so that
    # cargo in the build trusts what the host trusts: here a proxy that intercepts TLS
    # to the registries re-signs with a local CA, and crates.io fails with "self-signed
    # certificate in certificate chain" without it. The official rust image has only
    # Debian's bundle, which is right on a network without such a proxy.
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root"/usr/local/share/ca-certificates/
        chroot "$root" update-ca-certificates
    fi
    mkdir -p "$root"/usr/local/rust "$root"/usr/local/cargo/bin
    cp -a "$SYSROOT"/bin "$SYSROOT"/lib "$root"/usr/local/rust/
    [[ -d $SYSROOT/libexec ]] && cp -a "$SYSROOT"/libexec "$root"/usr/local/rust/
    # rustc finds its sysroot from its real path, so links on PATH are enough.
    for tool in "$root"/usr/local/rust/bin/*; do
        ln -s "../../rust/bin/${tool##*/}" "$root/usr/local/cargo/bin/${tool##*/}"
    done
    import_rootfs "$root" "$BUILDER" \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "ENV RUST_VERSION=$RUST_VERSION" \
        --change 'CMD ["bash"]' \
        --message "$BASE's debootstrap plus gcc, libc6-dev, ca-certificates and rustc $RUST_VERSION"
}

if podman image exists "$BUILDER"; then
    pass "builder image $BUILDER exists (reused)"
else
    step "make the builder image $BUILDER" 1800 make_builder
fi
check "builder runs cargo and rustc $RUST_VERSION" \
    timeout 120 podman run --rm "$BUILDER" sh -c 'cargo --version && rustc --version && cc --version | head -1'
podman images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep '^localhost/rill-proof/'

# --- build ---------------------------------------------------------------------------

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# Two cores shared with whoever else is working here: low priority, two jobs.
step "podman build localhost/rill:cpu" 5400 nice -n 10 podman build \
    -f deploy/container/Containerfile \
    --build-arg BUILDER_IMAGE="$BUILDER" \
    --build-arg BASE_IMAGE="$BASE" \
    --build-arg CARGO_BUILD_JOBS="$JOBS" \
    --build-arg VERSION="$VERSION" \
    --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || true)" \
    --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    -t "$IMAGE" .

log "image"
podman images --format '{{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' "$IMAGE"
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-150
podman image inspect --format \
    'user={{.Config.User}} entrypoint={{.Config.Entrypoint}} cmd={{.Config.Cmd}} stopsignal={{.Config.StopSignal}} ports={{.Config.ExposedPorts}} env={{.Config.Env}}' \
    "$IMAGE"
podman image inspect --format '{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}{{"\n"}}{{end}}' "$IMAGE"
check "image runs as 10001:10001" \
    test "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = 10001:10001
check "image stops with SIGTERM" \
    test "$(podman image inspect --format '{{.Config.StopSignal}}' "$IMAGE")" = SIGTERM

# --- helpers for the runs ------------------------------------------------------------

# curl with a bound: `http GET|POST URL [BODY]` prints the body, fails on non-2xx.
http() {
    local method=$1 url=$2 body=${3:-}
    if [[ -n $body ]]; then
        curl -fsS --max-time 60 -X "$method" -H 'Content-Type: application/json' -d "$body" "$url"
    else
        curl -fsS --max-time 10 -X "$method" "$url"
    fi
}

# Wait for /v2/health/ready to answer 200 (the model loaded), up to $2 seconds.
wait_ready() {
    local port=$1 limit=$2 t0 code
    t0=$(date +%s)
    while (( $(date +%s) - t0 < limit )); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
            "http://127.0.0.1:$port/v2/health/ready" || true)
        if [[ $code == 200 ]]; then
            echo "ready after $(( $(date +%s) - t0 )) s"
            return 0
        fi
        sleep 1
    done
    echo "not ready after $limit s (last status: ${code:-none})"
    return 1
}

# A JSON field of stdin: `json_get 'd["generated_text"]'`.
json_get() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

# Stop with SIGTERM (podman stop sends the image's STOPSIGNAL, then SIGKILL after -t
# seconds) and check the status is 0, i.e. it drained and exited rather than being killed.
stop_and_check() {
    local ctr=$1 t0 status
    log "podman stop $ctr"
    t0=$(date +%s)
    timeout 90 podman stop -t 60 "$ctr" || echo "podman stop failed"
    echo "stopped in $(( $(date +%s) - t0 )) s"
    status=$(podman inspect --format '{{.State.ExitCode}}' "$ctr")
    echo "exit status: $status"
    podman logs "$ctr" 2>&1 | tail -n 4
    check "$ctr: SIGTERM -> exit status 0" test "$status" = 0
    check "$ctr: logged the drain and the stop" \
        sh -c "podman logs '$ctr' 2>&1 | grep -q 'shutting down' && podman logs '$ctr' 2>&1 | grep -q 'stopped'"
}

podman rm -f -t 5 "$CTR_MODEL" "$CTR_DEMO" >/dev/null 2>&1 || true

# --- run 1: as the Kubernetes Deployment runs it ------------------------------------

# The Helm chart's securityContext (non-root, read-only root, no capabilities, no
# privilege escalation), its volumes (the model read-only at /models/model, /tmp) and
# its arguments.
step "podman run $CTR_MODEL (the fixture model, Kubernetes' settings)" 60 \
    podman run -d --name "$CTR_MODEL" \
    --read-only --tmpfs /tmp \
    --cap-drop=ALL --security-opt=no-new-privileges \
    -p "127.0.0.1:$PORT:8080" \
    -v "$REPO/integration-tests/fixtures/models/llama:/models/model:ro" \
    "$IMAGE" --model-id=/models/model --port=8080 --json-output --graceful-termination-timeout=120

check "$CTR_MODEL: /v2/health/live 200" \
    timeout 60 sh -c "until curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:$PORT/v2/health/live; do sleep 1; done"
check "$CTR_MODEL: /v2/health/ready 200" wait_ready "$PORT" 120
log "$CTR_MODEL: requests"
info=$(http GET "http://127.0.0.1:$PORT/info" || true)
echo "GET /info: $info"
check "$CTR_MODEL: /info model_id is /models/model" \
    test "$(json_get 'd["model_id"]' <<<"$info" 2>/dev/null)" = /models/model
gen=$(http POST "http://127.0.0.1:$PORT/generate" \
    '{"inputs": "Hello", "parameters": {"max_new_tokens": 8, "details": true}}' || true)
echo "POST /generate: $gen"
check "$CTR_MODEL: /generate answers 8 tokens" \
    test "$(json_get 'd["details"]["generated_tokens"]' <<<"$gen" 2>/dev/null)" = 8
log "$CTR_MODEL: process"
podman top "$CTR_MODEL" user group huser pid args || true
check "$CTR_MODEL: uid 10001 (id -u)" test "$(timeout 30 podman exec "$CTR_MODEL" id -u)" = 10001
check "$CTR_MODEL: gid 10001 (id -g)" test "$(timeout 30 podman exec "$CTR_MODEL" id -g)" = 10001
check "$CTR_MODEL: root filesystem is read-only" \
    sh -c "! timeout 30 podman exec $CTR_MODEL touch /opt/probe 2>/dev/null"
check "$CTR_MODEL: /tmp is writable" timeout 30 podman exec "$CTR_MODEL" touch /tmp/probe
stop_and_check "$CTR_MODEL"

# --- run 2: bare, the demo model ----------------------------------------------------

step "podman run $CTR_DEMO (no mount, no arguments)" 60 \
    podman run -d --name "$CTR_DEMO" --read-only --tmpfs /tmp \
    -p "127.0.0.1:$DEMO_PORT:8080" "$IMAGE"
check "$CTR_DEMO: /v2/health/ready 200" wait_ready "$DEMO_PORT" 120
log "$CTR_DEMO: requests"
info=$(http GET "http://127.0.0.1:$DEMO_PORT/info" || true)
echo "GET /info: $info"
check "$CTR_DEMO: /info model_id is the bundled demo (/opt/rill/models/demo)" \
    test "$(json_get 'd["model_id"]' <<<"$info" 2>/dev/null)" = /opt/rill/models/demo
gen=$(http POST "http://127.0.0.1:$DEMO_PORT/generate" \
    "{\"inputs\": \"$DEMO_PROMPT\", \"parameters\": {\"max_new_tokens\": 30}}" || true)
echo "POST /generate: $gen"
check "$CTR_DEMO: greedy /generate is the README's text" \
    test "$(json_get 'd["generated_text"]' <<<"$gen" 2>/dev/null)" = "$DEMO_TEXT"
chat=$(http POST "http://127.0.0.1:$DEMO_PORT/v1/chat/completions" \
    '{"model": "demo", "messages": [{"role": "user", "content": "What is a house?"}], "max_tokens": 48, "temperature": 0}' || true)
echo "POST /v1/chat/completions: $chat"
check "$CTR_DEMO: the chat answers as model \"demo\"" \
    test "$(json_get 'd["model"]' <<<"$chat" 2>/dev/null)" = demo
stop_and_check "$CTR_DEMO"

# --- the CUDA image ------------------------------------------------------------------

# Its runtime base, docker.io/nvidia/cuda, is not reachable from here, and there is no
# GPU to run it on; the build stage it shares with the CPU image is what can be checked.
log "CUDA image"
if ls /dev/nvidia* >/dev/null 2>&1; then echo "NVIDIA devices: $(ls /dev/nvidia*)"; else echo "no /dev/nvidia* on this machine"; fi
step "podman build Containerfile.cuda --target build (its build stage)" 5400 nice -n 10 podman build \
    -f deploy/container/Containerfile.cuda --target build \
    --build-arg BUILDER_IMAGE="$BUILDER" --build-arg CARGO_BUILD_JOBS="$JOBS" \
    -t localhost/rill-proof/cuda-build-stage .
podman rmi localhost/rill-proof/cuda-build-stage >/dev/null 2>&1 || true
cuda_base=$(sed -n 's/^ARG BASE_IMAGE=//p' deploy/container/Containerfile.cuda)
if timeout 60 podman pull "$cuda_base" 2>&1 | tail -n 2; then
    echo "$cuda_base is reachable: build it with"
    echo "  podman build -f deploy/container/Containerfile.cuda --build-arg BUILDER_IMAGE=$BUILDER -t localhost/rill:cuda ."
    skip "CUDA runtime stage: base pulled but not built by this proof"
else
    skip "CUDA runtime stage: $cuda_base cannot be pulled from here"
fi
