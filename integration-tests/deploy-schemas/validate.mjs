// Validate Kubernetes custom resources against their CRDs, as the kubernetes-models
// packages publish them, twice: the JSON-schema validators compiled from each CRD's
// OpenAPI schema (types, required fields, enums, patterns; they let unknown fields
// through), then the same packages' TypeScript interfaces, by type-checking each document
// as an object literal (TypeScript's excess-property check: an unknown field fails, at
// any depth).
// Reads a JSON list of documents on stdin; prints one JSON line per document:
// {"kind": ..., "name": ..., "error": null | "message"}. Exits 1 on an unknown kind.
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";

// apiVersion/kind → the validating class, and the module and interface of its type.
const models = {
  "monitoring.coreos.com/v1/ServiceMonitor": [
    ServiceMonitor,
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
    "IServiceMonitor",
  ],
  "gateway.networking.k8s.io/v1/HTTPRoute": [
    HTTPRoute,
    "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute",
    "IHTTPRoute",
  ],
};

let input = "";
for await (const chunk of process.stdin) input += chunk;
const docs = JSON.parse(input);
const errors = docs.map(() => null);
let unknown = false;

// The compiled JSON-schema validators.
docs.forEach((doc, i) => {
  const model = models[`${doc.apiVersion}/${doc.kind}`];
  if (!model) {
    errors[i] = `no schema for ${doc.apiVersion}/${doc.kind}`;
    unknown = true;
    return;
  }
  try {
    new model[0](doc).validate();
  } catch (e) {
    errors[i] = e.message;
  }
});

// The interfaces: one `const` per document, one document per line, so that a compiler
// error's line names its document. Written under node_modules (ignored by git), where
// the packages resolve.
const here = dirname(fileURLToPath(import.meta.url));
const dir = join(here, "node_modules", ".rill-check");
mkdirSync(dir, { recursive: true });
const imports = Object.values(models).map(([, module, type]) => `import type { ${type} } from "${module}";`);
const lines = docs.map((doc, i) => {
  const model = models[`${doc.apiVersion}/${doc.kind}`];
  return model ? `export const doc${i}: ${model[2]} = ${JSON.stringify(doc)};` : "";
});
writeFileSync(join(dir, "check.ts"), [...imports, ...lines].join("\n") + "\n");
const tsc = join(here, "node_modules", "typescript", "bin", "tsc");
try {
  execFileSync(process.execPath, [tsc, "--noEmit", "--strict", "--module", "nodenext",
    "--moduleResolution", "nodenext", "--target", "es2022", "--skipLibCheck", join(dir, "check.ts")],
    { encoding: "utf8" });
} catch (e) {
  for (const line of (e.stdout || "").split("\n")) {
    const m = line.match(/check\.ts\((\d+),\d+\): error (TS\d+: .*)/);
    const i = m ? Number(m[1]) - 1 - imports.length : -1;
    if (i >= 0 && i < docs.length) errors[i] = [errors[i], m[2]].filter(Boolean).join("; ");
    else if (line.trim()) errors.forEach((_, j) => (errors[j] = errors[j] || `tsc: ${line.trim()}`));
  }
}

docs.forEach((doc, i) => console.log(JSON.stringify({ kind: doc.kind, name: doc.metadata?.name, error: errors[i] })));
process.exit(unknown ? 1 : 0);
