"""The real `rill` binary for the client tests: started once per module on a free
loopback port (RILL_BIN points at it), stopped with SIGTERM, which must exit 0."""

import os
import socket
import subprocess
import time
import urllib.request

import pytest


def _serve(*extra):
    """Start the binary on the bundled model (served as `tiny-llama` and `llama` too)
    with `extra` flags; yield its URL; stop it with SIGTERM, which must exit 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [os.environ["RILL_BIN"], "--hostname", "127.0.0.1", "--port", str(port), "--kv-cache-memory-mib", "16",
         "--served-model-name", "tiny-llama", "--served-model-name", "llama", *extra],
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
    """A fresh server on the bundled model."""
    yield from _serve()


@pytest.fixture(scope="module")
def keyed_server():
    """A fresh server that needs an API key: `(url, key)`."""
    key = "hf_test_key"
    for url in _serve("--api-key", key):
        yield url, key
