#!/usr/bin/env python3
"""Static checks of docker-compose.yml (no Docker engine here).

usage: check_compose.py REPO_ROOT ENVOY_BIN

- every service the stack needs is there, on the pinned images (Envoy's: the last stage of
  the image the envoy service builds, with the filters' dynamic module in it);
- every file it references exists: build contexts, Dockerfiles, bind-mounted files and
  directories (deploy/compose/ rendered by scripts/compose.sh --render-only, run here);
- for each build (SLUICE_BUILD=wasm, then native, the default, which it leaves rendered) the
  Envoy config it mounts passes `envoy --mode validate`, with the container paths it uses
  (/etc/sluice/wasm, /etc/sluice/native, /var/lib/sluice) mapped onto the host paths they
  are mounted from (the module: the one scripts/build.sh built here, from the same source);
- a switch of builds keeps the key file's keys (the demo key stays valid).
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
NATIVE_MODULE = "/etc/sluice/native/libnative_filters.so"

want = {"envoy", "ratelimit", "batch", "redis", "pool-small-0", "pool-small-1", "pool-large-0",
        "pool-large-1", "prometheus", "grafana"}
if missing := want - set(services):
    errors.append(f"services missing: {sorted(missing)}")
envoy_build = services.get("envoy", {}).get("build", {})
envoy_dockerfile = root / envoy_build.get("context", ".") / envoy_build.get("dockerfile", "Dockerfile")
if envoy_dockerfile.is_file():
    lines = [l.split() for l in envoy_dockerfile.read_text().splitlines() if l.strip() and not l.startswith("#")]
    stages = [l for l in lines if l[0] == "FROM"]
    if not stages or stages[-1][1] != "envoyproxy/envoy:v1.40.0":
        errors.append(f"{envoy_dockerfile}: the envoy image must be built on envoyproxy/envoy:v1.40.0")
    if not any(l[0] == "COPY" and l[-1] == NATIVE_MODULE for l in lines):
        errors.append(f"{envoy_dockerfile}: the image must hold the filters' module at {NATIVE_MODULE}")
else:
    errors.append("envoy must be built from a Dockerfile (its image holds the filters' module)")
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

# The mounted Envoy config of each build, validated with its container paths mapped to the
# mounts (and the module to the one built on this host).
config = mounts.get(("envoy", "/etc/sluice/envoy.yaml"))
wasm = mounts.get(("envoy", "/etc/sluice/wasm"))
state = mounts.get(("envoy", "/var/lib/sluice"))
module = root / "target/release/examples/libnative_filters.so"
sluice = root / "target/release/sluice"


def render(build):
    out = subprocess.run(["scripts/compose.sh", "--render-only"], cwd=root, capture_output=True,
                         text=True, env={**os.environ, "SLUICE_BUILD": build})
    if out.returncode != 0:
        errors.append(f"scripts/compose.sh --render-only ({build}) failed:\n{out.stdout}{out.stderr}")
    keys = subprocess.run([sluice, "keys", "list", "--json", "--key-file", str(state / "ecds/key-auth.json")],
                          capture_output=True, text=True)
    return keys.stdout


def validate(build):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        shutil.copytree(state / "ecds", tmp / "ecds")
        def mapped(text):
            return (text.replace(NATIVE_MODULE, str(module)).replace("/etc/sluice/wasm", str(wasm))
                    .replace("/var/lib/sluice", str(tmp)))
        key_file = tmp / "ecds" / "key-auth.json"
        key_file.write_text(mapped(key_file.read_text()))
        text = config.read_text()
        want = "DynamicModuleFilter" if build == "native" else "wasm.v3.Wasm"
        for name, body in (("config", text), ("key file", key_file.read_text())):
            if want not in body:
                errors.append(f"the {build} build's {name} has no {want} filter")
        (tmp / "envoy.yaml").write_text(mapped(text))
        out = subprocess.run([envoy, "--mode", "validate", "-c", str(tmp / "envoy.yaml")],
                             capture_output=True, text=True)
        if out.returncode != 0:
            errors.append(f"the compose Envoy config ({build}) does not validate:\n" + out.stdout[-2000:] + out.stderr[-2000:])


if not (config and wasm and state):
    errors.append("envoy must mount its config, the wasm directory and its state directory")
else:
    keys = {}
    for build in ("wasm", "native"):
        keys[build] = render(build)
        validate(build)
    if not keys["native"] or keys["wasm"] != keys["native"]:
        errors.append(f"the key file's keys changed with the build:\n{keys['wasm']}\n{keys['native']}")

for e in errors:
    print("ERROR", e)
print(f"compose: {len(services)} services, {len(mounts)} bind mounts checked, {len(errors)} errors")
sys.exit(1 if errors else 0)
