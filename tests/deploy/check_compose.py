#!/usr/bin/env python3
"""Static checks of docker-compose.yml (no Docker engine here).

usage: check_compose.py REPO_ROOT ENVOY_BIN

- every service the stack needs is there, on the pinned images;
- every file it references exists: build contexts, Dockerfiles, bind-mounted files and
  directories (deploy/compose/ is rendered by scripts/compose.sh --render-only first);
- the Envoy config it mounts passes `envoy --mode validate`, with the container paths it
  uses (/etc/sluice/wasm, /var/lib/sluice) mapped onto the host paths they are mounted from.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import yaml

root = pathlib.Path(sys.argv[1]).resolve()
envoy = sys.argv[2]
compose = yaml.safe_load((root / "docker-compose.yml").read_text())
services = compose["services"]
errors = []

want = {"envoy", "ratelimit", "batch", "redis", "pool-small-0", "pool-small-1", "pool-large-0",
        "pool-large-1", "prometheus", "grafana"}
if missing := want - set(services):
    errors.append(f"services missing: {sorted(missing)}")
if services.get("envoy", {}).get("image") != "envoyproxy/envoy:v1.40.0":
    errors.append("envoy must run envoyproxy/envoy:v1.40.0")
if services.get("redis", {}).get("image") != "redis:7":
    errors.append("redis must be redis:7")

mounts = {}
for name, svc in services.items():
    build = svc.get("build")
    if isinstance(build, dict):
        ctx = root / build.get("context", ".")
        if not ctx.is_dir():
            errors.append(f"{name}: build context {ctx} missing")
        dockerfile = ctx / build.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            errors.append(f"{name}: {dockerfile} missing")
    for v in svc.get("volumes", []):
        src, dst = v.split(":")[:2]
        if src.startswith("."):
            path = (root / src).resolve()
            if not path.exists():
                errors.append(f"{name}: mounted {src} does not exist")
            mounts[(name, dst)] = path

# Prometheus scrapes Envoy's admin port; Grafana's dashboards directory is the mounted one.
prom = yaml.safe_load((root / "deploy/prometheus/prometheus.yml").read_text())
targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
if "envoy:9901" not in targets:
    errors.append("prometheus does not scrape envoy:9901")
prov = yaml.safe_load((root / "deploy/grafana/provisioning/dashboards/sluice.yml").read_text())
dash_dir = prov["providers"][0]["options"]["path"]
if ("grafana", dash_dir) not in mounts:
    errors.append(f"grafana's dashboards path {dash_dir} is not mounted")

# The mounted Envoy config, validated with its container paths mapped to the mounts.
config = mounts.get(("envoy", "/etc/sluice/envoy.yaml"))
wasm = mounts.get(("envoy", "/etc/sluice/wasm"))
state = mounts.get(("envoy", "/var/lib/sluice"))
if not (config and wasm and state):
    errors.append("envoy must mount its config, the wasm directory and its state directory")
else:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        shutil.copytree(state / "ecds", tmp / "ecds")
        def mapped(text):
            return text.replace("/etc/sluice/wasm", str(wasm)).replace("/var/lib/sluice", str(tmp))
        key_file = tmp / "ecds" / "key-auth.json"
        key_file.write_text(mapped(key_file.read_text()))
        (tmp / "envoy.yaml").write_text(mapped(config.read_text()))
        out = subprocess.run([envoy, "--mode", "validate", "-c", str(tmp / "envoy.yaml")],
                             capture_output=True, text=True)
        if out.returncode != 0:
            errors.append("the compose Envoy config does not validate:\n" + out.stdout[-2000:] + out.stderr[-2000:])

for e in errors:
    print("ERROR", e)
print(f"compose: {len(services)} services, {len(mounts)} bind mounts checked, {len(errors)} errors")
sys.exit(1 if errors else 0)
