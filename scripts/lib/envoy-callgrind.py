"""Drive one Envoy running under callgrind (`scripts/envoy-callgrind.sh`) and read its
worker thread's profile: warm-up requests, counts zeroed, REQUESTS requests of the same
chat on one kept-alive connection, counts dumped; then instructions a request by object,
and with --detail the module's calls into Envoy, each filter's handlers and the
allocations made under the module.

    envoy-callgrind.py BODY KEY PORT PID DUMP_DIR REQUESTS NAME CONNECTIONS [--detail]

With CONNECTIONS above 1, as many clients send at once (REQUESTS in all), so that the
worker's streams overlap as under load.

Callgrind's file format (`ob=`, `fn=`, `cob=`/`cfn=` with compressed `(id) name` names;
a `calls=` line followed by the call's inclusive cost; other cost lines are a function's
own) is read here directly: `callgrind_annotate` shows the unnamed parts of the stripped
Envoy binary one address at a time.
"""
import collections
import glob
import http.client
import os
import re
import shutil
import subprocess
import sys
import threading
import time

WARMUP = 100
NAMED = re.compile(r"(\w+)=\((\d+)\)(?: (.*))?")


def send_from(port: int, body: bytes, key: str, n: int, connections: int) -> None:
    """`n` requests from `connections` clients at once."""
    errors = []

    def client(k: int) -> None:
        try:
            send(port, body, key, k)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    shares = [n // connections + (1 if i < n % connections else 0) for i in range(connections)]
    threads = [threading.Thread(target=client, args=(k,)) for k in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"envoy-callgrind: {errors[0]}")


def send(port: int, body: bytes, key: str, n: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    for _ in range(n):
        conn.request("POST", "/v1/chat/completions", body, headers)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"envoy-callgrind: status {r.status}")
    conn.close()


class Profile:
    """One thread's dump: own costs by object and function, calls by callee."""

    def __init__(self, path: str):
        self.path = path
        names = {"ob": {}, "fn": {}}
        self.own_by_object = collections.Counter()
        self.own_by_function = collections.Counter()
        self.calls = collections.Counter()  # callee -> number of calls
        self.inclusive = collections.Counter()  # callee -> inclusive cost of those calls
        self.edges = collections.Counter()  # (caller, callee) -> number of calls
        ob = fn = cfn = None
        calls = 0
        call_cost_next = False

        def name(kind: str, line: str) -> str:
            m = NAMED.match(line.strip())
            table = names["ob" if kind in ("ob", "cob") else "fn"]
            if m is None:
                return line.strip().split("=", 1)[1]
            if m.group(3):
                table[m.group(2)] = m.group(3)
            return table.get(m.group(2), m.group(2))

        with open(path, errors="replace") as f:
            for line in f:
                head = line[:1]
                if head.isdigit() or head in "+-*":
                    parts = line.split()
                    cost = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
                    if call_cost_next:
                        call_cost_next = False
                        self.calls[cfn] += calls
                        self.inclusive[cfn] += cost
                        self.edges[(fn, cfn)] += calls
                    else:
                        self.own_by_object[ob] += cost
                        self.own_by_function[fn] += cost
                elif line.startswith("ob="):
                    ob = name("ob", line)
                elif line.startswith("fn="):
                    fn = name("fn", line)
                elif line.startswith("cob="):
                    name("cob", line)
                elif line.startswith("cfn="):
                    cfn = name("cfn", line)
                elif line.startswith("calls="):
                    calls = int(line.split("=", 1)[1].split()[0])
                    call_cost_next = True

    def total(self) -> int:
        return sum(self.own_by_object.values())


def object_label(path: str) -> str:
    base = os.path.basename(path or "???")
    if base == "envoy":
        return "Envoy"
    if base == "???":
        return "Envoy, unnamed (its allocator among it)"
    if base.startswith("libc.so"):
        return "C library"
    if base.startswith("libnative_"):
        return "the module (" + base + ")"
    return base


def main() -> None:
    body_path, key, port, pid, dump_dir, requests, row, connections = sys.argv[1:9]
    detail = "--detail" in sys.argv[9:]
    port, requests, connections = int(port), int(requests), int(connections)
    body = open(body_path, "rb").read()
    send_from(port, body, key, WARMUP, connections)
    before = set(glob.glob(f"{dump_dir}/envoy.{pid}*"))
    subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
    send_from(port, body, key, requests, connections)
    subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    # Each thread's dump is its own file; the worker is the one that did the most.
    for _ in range(100):
        dumps = [p for p in glob.glob(f"{dump_dir}/envoy.{pid}*") if p not in before]
        if dumps:
            break
        time.sleep(0.2)
    time.sleep(1)
    dumps = [p for p in glob.glob(f"{dump_dir}/envoy.{pid}*") if p not in before]
    if not dumps:
        sys.exit("envoy-callgrind: no dump")
    worker = max((Profile(p) for p in dumps), key=Profile.total)
    keep = os.environ.get("ENVOY_CALLGRIND_KEEP")
    if keep:
        # For callgrind_annotate by function (divide by REQUESTS for a request's share).
        os.makedirs(keep, exist_ok=True)
        shutil.copy(worker.path, os.path.join(keep, f"{row}.callgrind"))
    per = lambda n: n / requests  # noqa: E731
    parts = ", ".join(
        f"{object_label(o)} {per(c):,.0f}"
        for o, c in worker.own_by_object.most_common()
        if per(c) >= 100
    )
    print(f"{row:13} {per(worker.total()):9,.0f}  ({parts})")
    if not detail:
        return
    print("  Envoy callbacks the module makes (a request; instructions each, Envoy's side):")
    for callee, n in worker.calls.most_common():
        if callee and callee.startswith("envoy_dynamic_module_callback") and per(n) >= 0.5:
            cost = worker.inclusive[callee]
            short = callee.removeprefix("envoy_dynamic_module_callback_")
            print(f"    {short:48} {per(n):5.1f} x {cost / n:7,.0f} = {per(cost):8,.0f}")
    print("  each filter's handlers (inclusive, a request):")
    handlers = collections.Counter()
    lifecycle = re.compile(r"<sluice_(\w+?)::lifecycle::\w+ as sluice_common::host::Lifecycle>::(on_\w+)")
    for callee, cost in worker.inclusive.items():
        m = lifecycle.match(callee or "")
        if m:
            handlers[f"{m.group(1)}.{m.group(2)}"] += cost
    for h, cost in handlers.most_common():
        if per(cost) >= 500:
            print(f"    {h:48} {per(cost):8,.0f}")
    allocs = sum(worker.calls[f] for f in ("malloc", "realloc", "calloc"))
    alloc_cost = sum(worker.inclusive[f] for f in ("malloc", "free", "realloc", "calloc"))
    print(f"  allocations under the module: {per(allocs):.0f} a request"
          f" ({per(alloc_cost):,.0f} instructions with their frees)")


if __name__ == "__main__":
    main()
