"""schemathesis against the server's own OpenAPI document (`/api-doc/openapi.json`):
every route of every family, requests generated from the documented schemas (coverage,
fuzzing and stateful phases, fixed seed), and every check schemathesis has: no 5xx, every
status code, content type, header and body as documented (server-sent events event by
event), `Allow` on 405s, and every request the document calls invalid refused with a 4xx
(so the document carries the bounds validation enforces: router/src/api_doc.rs). Runs in
its own virtualenv (scripts/python_tests.sh); skips elsewhere.

One check is left out: that every request the document calls valid is accepted. Some
limits cannot be written in JSON Schema — a prompt's length in tokens against
`--max-input-tokens`, `max_new_tokens` against what is left of the context, the tensor
named `text_input` among `infer`'s inputs — so a schema-valid request may still be a 4xx.
"""

import os
import subprocess
import sys

import pytest


def test_every_generated_request_is_answered_as_documented(base_url, tmp_path):
    pytest.importorskip("schemathesis")
    cli = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    run = subprocess.run(
        [cli, "run", f"{base_url}/api-doc/openapi.json", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance",
         "--max-examples", "15", "--workers", "1", "--seed", "20261204", "--generation-deterministic"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its cache stays out of the tree
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "passed" in run.stdout, run.stdout[-2000:]
