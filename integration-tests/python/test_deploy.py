"""The deployment files under deploy/ are real: the Kubernetes manifests validate
against the Kubernetes API's own schemas (`kubernetes-validate`, strict: unknown fields
fail), and every probe path, scrape path and metric name they and the Grafana
dashboard name exists on the running server. Each test skips when its packages are
not installed in the running virtualenv.

Not schema-validated: the Prometheus Operator's ServiceMonitor (a CRD whose schema no
registry package carries); its port and path are checked against the Service and
the server instead.
"""

import glob
import json
import os
import re
import urllib.request

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
KUBE = os.path.join(ROOT, "deploy", "kubernetes")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "rill.json")
# The oldest Kubernetes the manifests promise to work on.
KUBERNETES_VERSION = "1.29.0"
CORE_KINDS = {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}


def manifests():
    yaml = pytest.importorskip("yaml")
    docs = []
    for path in sorted(glob.glob(os.path.join(KUBE, "*.yaml"))):
        with open(path) as f:
            docs += [(os.path.basename(path), d) for d in yaml.safe_load_all(f) if d]
    return docs


def get(url):
    with urllib.request.urlopen(url) as r:
        return r.status, r.read().decode()


def exported_metrics(base_url):
    """Series names on /metrics after one request and one refused request (so the
    histograms and the failure counter exist)."""
    for parameters in [{"max_new_tokens": 2}, {"max_new_tokens": 0}]:
        body = json.dumps({"inputs": "Hi", "parameters": parameters}).encode()
        req = urllib.request.Request(f"{base_url}/generate", body, {"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req).read()
        except urllib.error.HTTPError as e:
            assert e.code == 422
    _, text = get(f"{base_url}/metrics")
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def declared_metrics():
    """Every series the server declares (router/src/metrics.rs), for those only a rare
    event creates (a failed engine step)."""
    with open(os.path.join(ROOT, "router", "src", "metrics.rs")) as f:
        return set(re.findall(r'"(rill_[a-z_]+)"', f.read()))


def test_core_manifests_validate_against_the_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate")
    docs = manifests()
    kinds = {d["kind"] for _, d in docs}
    assert CORE_KINDS <= kinds, kinds
    for name, doc in docs:
        if doc["kind"] == "Kustomization":
            assert all(os.path.exists(os.path.join(KUBE, r)) for r in doc["resources"]), doc
        elif doc["kind"] in CORE_KINDS:
            kv.validate(doc, KUBERNETES_VERSION, strict=True)
        else:
            assert doc["kind"] == "ServiceMonitor", f"{name}: {doc['kind']} is neither validated nor checked"


def test_probes_scrapes_and_metric_names_exist_on_the_server(base_url):
    docs = {d["kind"]: d for _, d in manifests()}
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"]:
        status, _ = get(base_url + container[probe]["httpGet"]["path"])
        assert status == 200, probe
    # The probes' named port is the container's, and the Service and ServiceMonitor use it.
    port = {p["name"] for p in container["ports"]}
    assert {container[p]["httpGet"]["port"] for p in ["startupProbe", "livenessProbe", "readinessProbe"]} <= port
    service_ports = {p["name"] for p in docs["Service"]["spec"]["ports"]}
    monitor = docs["ServiceMonitor"]["spec"]
    assert monitor["endpoints"][0]["port"] in service_ports
    assert monitor["selector"]["matchLabels"].items() <= docs["Service"]["metadata"]["labels"].items()
    exported = exported_metrics(base_url)
    assert get(base_url + monitor["endpoints"][0]["path"])[0] == 200
    for metric in docs["HorizontalPodAutoscaler"]["spec"]["metrics"]:
        assert metric["pods"]["metric"]["name"] in exported, metric


def test_every_dashboard_query_names_an_exported_metric(base_url):
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    exported, declared = exported_metrics(base_url), declared_metrics()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    only_declared = set()
    for expr in exprs:
        for name in re.findall(r"\brill_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in exported or base in declared, f"{name} in {expr!r} is no Rill metric"
            if base not in exported:
                only_declared.add(base)
    # Only what a failed engine step or an eviction would first record.
    assert only_declared <= {"rill_batch_inference_failure", "rill_prefix_cache_evictions"}, only_declared
    # What the issue asks the dashboard to show.
    text = " ".join(exprs)
    for needed in ["time_to_first_token", "inter_token_latency", "generated_tokens", "queue_size",
                   "batch_current_size", "kv_cache_usage", "preemptions", "request_failure"]:
        assert f"rill_{needed}" in text or f"rill_request_{needed}" in text, needed
