#!/usr/bin/env python3
"""Validate Istio resources against the CRD schemas (../shared/istio-crds/).

usage: validate_istio.py CRD_DIR RESOURCE.yaml...

Each resource is checked against the openAPIV3Schema of its CRD version, made strict the
way `kubectl apply --validate=strict` is: unknown fields are errors (except where the schema
preserves unknown fields, as `pluginConfig` does), and `nullable` is honoured. The CEL rule
on WasmPlugin.url (scheme one of http, https, oci, file) is checked here too.
"""

import pathlib
import sys

import jsonschema
import yaml


def strict(schema):
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k in ("properties", "patternProperties", "definitions"):
            out[k] = {name: strict(sub) for name, sub in v.items()}
        elif k in ("items", "additionalProperties", "not"):
            out[k] = strict(v)
        elif k in ("oneOf", "anyOf", "allOf"):
            out[k] = [strict(s) for s in v]
        else:
            out[k] = v
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in out and not out.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in out):
        out["additionalProperties"] = False
    return out


def load_crds(crd_dir):
    crds = {}
    for path in sorted(pathlib.Path(crd_dir).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                crds[key] = strict(version["schema"]["openAPIV3Schema"])
    return crds


def main():
    crds = load_crds(sys.argv[1])
    errors, checked = [], 0
    for path in sys.argv[2:]:
        for i, doc in enumerate(d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d):
            where = f"{path}#{i} {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            schema = crds.get((doc.get("apiVersion"), doc.get("kind")))
            if schema is None:
                errors.append(f"{where}: no CRD for {doc.get('apiVersion')} {doc.get('kind')}")
                continue
            meta = doc.get("metadata", {})
            if not meta.get("name") or not meta.get("namespace"):
                errors.append(f"{where}: metadata.name and metadata.namespace are required")
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
            validator = jsonschema.Draft7Validator(schema)
            for e in sorted(validator.iter_errors(body), key=lambda e: list(e.path)):
                errors.append(f"{where}: {'/'.join(map(str, e.path))}: {e.message}")
            if doc["kind"] == "WasmPlugin":
                url = doc["spec"].get("url", "")
                if url.split("://", 1)[0] not in ("http", "https", "oci", "file"):
                    errors.append(f"{where}: url scheme must be http, https, oci or file: {url}")
            checked += 1
    for e in errors:
        print("ERROR", e)
    print(f"istio: {checked} resources checked against {len(crds)} CRD versions, {len(errors)} errors")
    sys.exit(1 if errors or checked == 0 else 0)


if __name__ == "__main__":
    main()
