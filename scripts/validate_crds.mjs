// Validates the custom resources a chart renders (HTTPRoute, ServiceMonitor) with the
// schemas of @kubernetes-models, which kubernetes-validate does not have.
//   node validate_crds.mjs manifests.json   -> one line per resource; exit 1 if any is invalid
import { readFileSync } from "node:fs";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const models = {
  "gateway.networking.k8s.io/v1/HTTPRoute": HTTPRoute,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
};
let failed = false;
for (const doc of JSON.parse(readFileSync(process.argv[2], "utf8"))) {
  const Model = models[`${doc.apiVersion}/${doc.kind}`];
  if (!Model) {
    console.log(`unknown ${doc.apiVersion} ${doc.kind}`);
    failed = true;
    continue;
  }
  try {
    new Model(doc).validate();
    console.log(`valid ${doc.kind} ${doc.metadata.name}`);
  } catch (error) {
    console.log(`invalid ${doc.kind} ${doc.metadata.name}: ${error.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
