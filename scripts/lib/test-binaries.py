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

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DURATIONS = os.path.join(ROOT, "target", "test-durations.json")
RESULT = re.compile(r"^test result: \w+\. (\d+) passed; (\d+) failed", re.M)


def test_binaries():
    """(label, executable, package dir, is an end-to-end suite, target name, source) for
    each test binary of the workspace, built by cargo."""
    build = subprocess.run(
        ["cargo", "test", "--workspace", "--no-run", "--message-format=json-render-diagnostics"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    if build.returncode != 0:
        sys.exit("test-binaries: `cargo test --workspace --no-run` failed")
    out = build.stdout
    found = []
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg["profile"]["test"]:
            continue
        target = msg["target"]
        pkg_dir = os.path.dirname(msg["manifest_path"])
        src = os.path.relpath(target["src_path"], ROOT)
        exe = msg["executable"]
        label = f"{src} ({os.path.relpath(exe, ROOT)})"
        e2e = "test" in target["kind"] and os.path.relpath(pkg_dir, ROOT) == "tests"
        found.append((label, exe, pkg_dir, e2e, target["name"], src))
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("SLUICE_TEST_JOBS", "2")))
    ap.add_argument("--wasm-suite", action="append", default=[])
    args = ap.parse_args()

    bins = test_binaries()
    # A job: (label, executable, directory, environment, key of its recorded duration —
    # the source path, which a rebuild does not change as it does the executable's name).
    jobs = [(label, exe, cwd, {}, src) for label, exe, cwd, _, _, src in bins]
    e2e = {name: (label, exe, cwd, src) for label, exe, cwd, is_e2e, name, src in bins if is_e2e}
    for name in args.wasm_suite:
        if name not in e2e:
            sys.exit(f"test-binaries: no end-to-end suite named {name}")
        label, exe, cwd, src = e2e[name]
        wasm = " with SLUICE_E2E_BUILD=wasm"
        jobs.append((label + wasm, exe, cwd, {"SLUICE_E2E_BUILD": "wasm"}, src + wasm))

    try:
        with open(DURATIONS) as f:
            last = json.load(f)
    except (OSError, ValueError):
        last = {}
    # Without a record, the end-to-end suites (long, mostly waiting) first.
    def expected(job):
        if job[4] in last:
            return last[job[4]]
        return 60.0 if os.path.relpath(job[2], ROOT) == "tests" else 1.0
    jobs.sort(key=expected, reverse=True)

    lock = threading.Lock()
    durations, failed, totals = {}, [], [0, 0]

    def run(job):
        label, exe, cwd, env, key = job
        start = time.monotonic()
        proc = subprocess.run([exe], cwd=cwd, env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace")
        took = time.monotonic() - start
        with lock:
            durations[key] = round(took, 1)
            print(f"\n     Running {label}, {took:.1f} s", flush=True)
            sys.stdout.write(proc.stdout)
            sys.stdout.flush()
            for passed, fails in RESULT.findall(proc.stdout):
                totals[0] += int(passed)
                totals[1] += int(fails)
            if proc.returncode != 0:
                failed.append(f"{label} (exit {proc.returncode})")

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
