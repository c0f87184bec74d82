// Validates custom-resource objects with their own models' ajv validators.
// Usage: node validate_crds.mjs <node_modules dir>  < objects.json   (a JSON array of objects)
// Prints a JSON array [{kind, name, error}] (error null when valid); exits 2 on an unsupported kind.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
if (!modules) {
  console.error("usage: node validate_crds.mjs <node_modules dir> < objects.json");
  process.exit(64);
}

const load = async (relative) => import(pathToFileURL(join(modules, relative)).href);
const monitoring = await load("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js");
const keda = await load("@kubernetes-models/keda/keda.sh/v1alpha1/index.js");

const models = {
  "monitoring.coreos.com/v1/ServiceMonitor": monitoring.ServiceMonitor,
  "monitoring.coreos.com/v1/PodMonitor": monitoring.PodMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": monitoring.PrometheusRule,
  "keda.sh/v1alpha1/ScaledObject": keda.ScaledObject,
};

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const obj of objects) {
  const key = `${obj.apiVersion}/${obj.kind}`;
  const Model = models[key];
  if (!Model) {
    console.error(`no model for ${key}`);
    process.exit(2);
  }
  let error = null;
  try {
    new Model(obj).validate();
  } catch (exc) {
    error = String(exc && exc.message ? exc.message : exc);
  }
  results.push({ kind: obj.kind, name: obj.metadata?.name ?? "", error });
}
process.stdout.write(JSON.stringify(results));
