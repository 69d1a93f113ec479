"""The real `rill` binary for the client tests: started once per module on a free
loopback port (RILL_BIN points at it), stopped with SIGTERM, which must exit 0."""

import os
import socket
import subprocess
import time
import urllib.request

import pytest


FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "models", "llama")


def _serve(*extra, model=("--model-id", FIXTURE, "--served-model-name", "tiny-llama", "--served-model-name", "llama"),
           kv_mib="16"):
    """Start the binary on the tiny `llama` fixture (served as `tiny-llama` and `llama`;
    `model=()` serves the bundled demo model) with `extra` flags; yield its URL; stop it
    with SIGTERM, which must exit 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [os.environ["RILL_BIN"], "--hostname", "127.0.0.1", "--port", str(port), "--kv-cache-memory-mib", kv_mib,
         *model, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "MODEL_ID"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health") as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert time.time() < deadline, "rill did not become healthy"
        time.sleep(0.05)
    yield url
    proc.terminate()
    assert proc.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def base_url():
    """A fresh server on the tiny `llama` fixture."""
    yield from _serve()


@pytest.fixture(scope="module")
def keyed_server():
    """A fresh server that needs an API key: `(url, key)`."""
    key = "hf_test_key"
    for url in _serve("--api-key", key):
        yield url, key


@pytest.fixture(scope="module")
def demo_url():
    """A fresh server on the bundled demo model (no `--model-id`)."""
    yield from _serve(model=())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def kv_events_server():
    """A server with a small KV cache (85 blocks) that publishes KV events:
    `(url, zmq_endpoint)`."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    for url in _serve("--kv-events-endpoint", endpoint, kv_mib="1"):
        yield url, endpoint
