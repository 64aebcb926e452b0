#!/usr/bin/env python3
"""Run the workspace's test binaries (and the wasm build's end-to-end suites) N at a time.

`cargo test` runs its binaries one after another, and most of an end-to-end binary's time
is spent waiting on Envoy, the engine or a timer, not on the CPU: two at a time finish the
same tests in less wall time (docs/testing.md, "Where CI's time goes"). Each binary runs as
`cargo test` would run it: from its package's directory, with the harness's own threads.

    test-binaries.py [--jobs N] [--wasm-suite NAME ...]

Builds with `cargo test --workspace --no-run` first (the same features as `cargo test
--workspace`, so nothing is compiled twice), then runs every test binary; each --wasm-suite
NAME runs the end-to-end binary NAME once more with SLUICE_E2E_BUILD=wasm. A binary's output
is printed whole when it finishes. Exit status 1 if any binary failed (all of them run).
Binaries that took longest last time (target/test-durations.json) start first.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DURATIONS = os.path.join(ROOT, "target", "test-durations.json")
RESULT = re.compile(r"^test result: \w+\. (\d+) passed; (\d+) failed", re.M)


class Run(NamedTuple):
    """One run of a test binary."""
    label: str
    exe: str
    cwd: str  # its package's directory, as `cargo test` runs it
    env: dict
    key: str  # of its recorded duration: the source path (a rebuild renames the exe)
    e2e: bool  # an end-to-end suite (tests/tests/*.rs)
    name: str  # the test target's name


def test_binaries():
    """A `Run` of each test binary of the workspace, built by cargo."""
    build = subprocess.run(
        ["cargo", "test", "--workspace", "--no-run", "--message-format=json-render-diagnostics"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    if build.returncode != 0:
        sys.exit("test-binaries: `cargo test --workspace --no-run` failed")
    found = []
    for line in build.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg["profile"]["test"]:
            continue
        target = msg["target"]
        cwd = os.path.dirname(msg["manifest_path"])
        src = os.path.relpath(target["src_path"], ROOT)
        exe = msg["executable"]
        e2e = "test" in target["kind"] and os.path.relpath(cwd, ROOT) == "tests"
        found.append(Run(f"{src} ({os.path.relpath(exe, ROOT)})", exe, cwd, {}, src, e2e,
                         target["name"]))
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("SLUICE_TEST_JOBS", "2")))
    ap.add_argument("--wasm-suite", action="append", default=[])
    args = ap.parse_args()

    bins = test_binaries()
    jobs = list(bins)
    e2e = {b.name: b for b in bins if b.e2e}
    for name in args.wasm_suite:
        if name not in e2e:
            sys.exit(f"test-binaries: no end-to-end suite named {name}")
        wasm = " with SLUICE_E2E_BUILD=wasm"
        b = e2e[name]
        jobs.append(b._replace(label=b.label + wasm, env={"SLUICE_E2E_BUILD": "wasm"},
                               key=b.key + wasm))

    try:
        with open(DURATIONS) as f:
            last = json.load(f)
    except (OSError, ValueError):
        last = {}
    # Without a record, the end-to-end suites (long, mostly waiting) first.
    jobs.sort(key=lambda r: last.get(r.key, 60.0 if r.e2e else 1.0), reverse=True)

    lock = threading.Lock()
    durations, failed, totals = {}, [], [0, 0]

    def run(job):
        start = time.monotonic()
        proc = subprocess.run([job.exe], cwd=job.cwd, env={**os.environ, **job.env},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace")
        took = time.monotonic() - start
        with lock:
            durations[job.key] = round(took, 1)
            print(f"\n     Running {job.label}, {took:.1f} s", flush=True)
            sys.stdout.write(proc.stdout)
            sys.stdout.flush()
            for passed, fails in RESULT.findall(proc.stdout):
                totals[0] += int(passed)
                totals[1] += int(fails)
            if proc.returncode != 0:
                failed.append(f"{job.label} (exit {proc.returncode})")

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(run, jobs))
    try:
        with open(DURATIONS, "w") as f:
            json.dump(durations, f, indent=1, sort_keys=True)
    except OSError:
        pass
    print(f"\ntest-binaries: {len(jobs)} runs of {len(bins)} binaries, {args.jobs} at a time, "
          f"in {time.monotonic() - start:.0f} s: {totals[0]} passed, {totals[1]} failed")
    if failed:
        print("test-binaries: failed:\n  " + "\n  ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
