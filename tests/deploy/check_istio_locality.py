#!/usr/bin/env python3
"""The DestinationRules' locality settings say what the pool description says.

usage: check_istio_locality.py SLUICE_BIN OUT_DIR

Renders envoy/istio/destinationrules.yaml.j2 with a pool of weighted zones and a pool that
fails over to another region (the same description envoy/envoy.yaml.j2 takes) and checks:
the zones' shares in percent sum to 100 in the weights' proportions, a zone without a weight
counts 1, failover goes from the priority-0 region to the next, and a pool without
localities gets no locality setting. The CRD schemas are checked by validate_istio.py.
"""

import json
import pathlib
import subprocess
import sys

import yaml

sluice, out_dir = sys.argv[1], pathlib.Path(sys.argv[2])
pools = [
    {"name": "pool-zones", "locality_weights": {"eu-a": 2, "eu-b": 1},
     "hosts": [{"host": "a", "port": 1, "region": "eu", "zone": "eu-a"},
               {"host": "b", "port": 1, "region": "eu", "zone": "eu-b"},
               {"host": "c", "port": 1, "region": "eu", "zone": "eu-c"}]},
    {"name": "pool-regions", "lb": "maglev",
     "hosts": [{"host": "a", "port": 1, "region": "eu", "zone": "eu-a"},
               {"host": "b", "port": 1, "region": "us", "zone": "us-a", "priority": 1}]},
    {"name": "pool-plain"},
]
out = out_dir / "destinationrules-locality.yaml"
subprocess.run([sluice, "render", "envoy/istio/destinationrules.yaml.j2", "-o", str(out),
                "-s", "pools=" + json.dumps(pools)], check=True)
rules = {d["metadata"]["name"]: d["spec"]["trafficPolicy"]
         for d in yaml.safe_load_all(out.read_text()) if d}
errors = []

zones = rules["pool-zones"]["loadBalancer"].get("localityLbSetting", {})
want = {"eu/eu-a/*": 50, "eu/eu-b/*": 25, "eu/eu-c/*": 25}
got = (zones.get("distribute") or [{}])[0].get("to")
if got != want or not zones.get("enabled"):
    errors.append(f"pool-zones: distribute {got!r}, want {want!r}")

regions = rules["pool-regions"]["loadBalancer"].get("localityLbSetting", {})
if regions.get("failover") != [{"from": "eu", "to": "us"}]:
    errors.append(f"pool-regions: failover {regions.get('failover')!r}, want eu -> us")
if "outlierDetection" not in rules["pool-regions"]:
    errors.append("pool-regions: locality failover needs outlier detection")

if "localityLbSetting" in rules["pool-plain"]["loadBalancer"]:
    errors.append("pool-plain: a locality setting without localities")

for e in errors:
    print(e, file=sys.stderr)
sys.exit(1 if errors else 0)
