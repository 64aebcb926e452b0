#!/usr/bin/env python3
"""Both Istio forms carry the chain of DESIGN.md, in its order, with the plain Envoy configs.

usage: check_istio_chain.py RENDERED_DIR

RENDERED_DIR holds what scripts/test.sh renders: wasmplugins-*.yaml and envoyfilters-*.yaml.
- WasmPlugins, in the order Istio runs them (AUTHN, AUTHZ, STATS; within a phase the higher
  priority first), are the filters of the chain before endpoint-picker, in DESIGN.md's order;
- an EnvoyFilter's HTTP filters (each inserted before the router, so in the order of the
  patches) are the same, each with an extension config of that name;
- every filter's configuration is envoy/filters/<filter>.json, as plain Envoy loads it
  (key-auth's is the rendered key configuration: empty by default).
"""

import json
import pathlib
import sys

import yaml

root = pathlib.Path(__file__).resolve().parents[2]
rendered = pathlib.Path(sys.argv[1])
errors = []

# DESIGN.md's order up to the router's neighbour (endpoint-picker needs the plain Envoy
# template's engine pools: override_host, metrics clusters; docs/deployment.md).
CHAIN = [
    ("sluice.key_auth", None),
    ("sluice.rate_limit.admission", "rate-limit.json"),
    ("sluice.model_router", "model-router.json"),
    ("sluice.pii_redaction", "pii-redaction.json"),
    ("sluice.token_counter", "token-counter.json"),
    ("sluice.response_cache", "response-cache.json"),
    ("sluice.rate_limit.tokens", "rate-limit.json"),
]


def want_config(file):
    return json.loads((root / "envoy/filters" / file).read_text()) if file else {"keys": []}


def check(form, names, configs):
    if names != [n for n, _ in CHAIN]:
        errors.append(f"{form}: filters {names}, want {[n for n, _ in CHAIN]}")
        return
    for (name, file), got in zip(CHAIN, configs):
        if got != want_config(file):
            errors.append(f"{form}: {name}'s configuration is not envoy/filters/{file}")


phases = {"AUTHN": 0, "AUTHZ": 1, "STATS": 2}
files = sorted(rendered.glob("wasmplugins-*.yaml")) + sorted(rendered.glob("envoyfilters-*.yaml"))
if len(files) < 2:
    errors.append(f"nothing rendered in {rendered}")
for path in files:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    if path.name.startswith("wasmplugins"):
        plugins = sorted((d["spec"] for d in docs), key=lambda s: (phases[s["phase"]], -s["priority"]))
        check(path.name, [p["pluginName"] for p in plugins], [p["pluginConfig"] for p in plugins])
        continue
    patches = [p for d in docs for p in d["spec"]["configPatches"]]
    extensions = {p["patch"]["value"]["name"]: p["patch"]["value"]["typed_config"]["config"]
                  for p in patches if p["applyTo"] == "EXTENSION_CONFIG"}
    filters = [p["patch"]["value"]["name"] for p in patches if p["applyTo"] == "HTTP_FILTER"]
    missing = [n for n in filters if n not in extensions]
    if missing:
        errors.append(f"{path.name}: HTTP filters without an extension config: {missing}")
        continue
    check(path.name, filters, [json.loads(extensions[n]["configuration"]["value"]) for n in filters])
    for n in filters:
        if extensions[n]["root_id"] != n:
            errors.append(f"{path.name}: {n}'s root_id is {extensions[n]['root_id']}")

for e in errors:
    print("ERROR", e)
print(f"istio chain: {len(files)} rendered files, {len(errors)} errors")
sys.exit(1 if errors else 0)
