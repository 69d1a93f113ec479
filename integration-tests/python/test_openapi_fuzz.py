"""schemathesis against the server's own OpenAPI document (`/api-doc/openapi.json`):
every route of every family, requests generated from the documented schemas (coverage,
fuzzing and stateful phases, fixed seed), and no answer may be a 5xx. Runs in its own
virtualenv (scripts/python_tests.sh); skips elsewhere.

Not yet checked: that every response matches its documented schema and status codes
(`--checks all` still reports undocumented statuses and content types).
"""

import os
import subprocess
import sys

import pytest


def test_no_generated_request_gets_a_server_error(base_url):
    pytest.importorskip("schemathesis")
    cli = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    run = subprocess.run(
        [cli, "run", f"{base_url}/api-doc/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "15", "--workers", "1", "--seed", "20261204", "--generation-deterministic"],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "passed" in run.stdout, run.stdout[-2000:]
