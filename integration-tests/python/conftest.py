"""The real `rill` binary for the client tests: started once per module on a free
loopback port (RILL_BIN points at it), stopped with SIGTERM, which must exit 0."""

import os
import socket
import subprocess
import time
import urllib.request

import pytest


@pytest.fixture(scope="module")
def base_url():
    """The URL of a fresh server on the bundled model, served as `tiny-llama` too."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [os.environ["RILL_BIN"], "--hostname", "127.0.0.1", "--port", str(port), "--kv-cache-memory-mib", "16",
         "--served-model-name", "tiny-llama", "--served-model-name", "llama"],
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
