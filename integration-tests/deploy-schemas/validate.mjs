// Validate Kubernetes custom resources against the schemas of their CRDs, as compiled
// by the kubernetes-models packages (types, required fields, enums, patterns).
// Reads a JSON list of documents on stdin; prints one JSON line per document:
// {"kind": ..., "name": ..., "error": null | "message"}. Exits 1 on an unknown kind.
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";

const models = {
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "gateway.networking.k8s.io/v1/HTTPRoute": HTTPRoute,
};

let input = "";
for await (const chunk of process.stdin) input += chunk;
let unknown = false;
for (const doc of JSON.parse(input)) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const Model = models[key];
  let error = null;
  if (!Model) {
    error = `no schema for ${key}`;
    unknown = true;
  } else {
    try {
      new Model(doc).validate();
    } catch (e) {
      error = e.message;
    }
  }
  console.log(JSON.stringify({ kind: doc.kind, name: doc.metadata?.name, error }));
}
process.exit(unknown ? 1 : 0);
