"""Send the same chat request to several gateways in turn, one kept-alive connection each,
and print each one's median latency in microseconds (`name median_us` per line), and, for
a target given with its process id, the CPU time its process spent per request
(`name median_us cpu_us`).

Costs of tens of microseconds sit below the drift of this machine between separate runs;
alternating request by request makes the drift hit every target alike. Latency also moves
with scheduling (two cores shared by the client, the gateways and the backend); the CPU
time a gateway's threads spent (`/proc/PID/task/*/schedstat`, in nanoseconds) does not, so
it is the steadier measure of what a filter costs. It includes the process's own
background work (stats, timers, a filter's scrapes) over the run, spread over its requests.

The targets are visited in a new random order each round (a fixed seed), so that none
always follows the same other. That does not make two processes equal: two Envoys of one
build can still differ by tens of microseconds of CPU a request (docs/benchmarks.md,
"Comparing two builds"); compare two Envoys of each build.

With ALTERNATE_FRESH=1 every request's prompt is new (a number put before the first
message's text), so nothing about it can be remembered between requests (as wrk's
BENCH_FRESH in scripts/lib/post.lua).

    alternate.py BODY_FILE KEY ROUNDS WARMUP_ROUNDS name:port[:pid] [name:port[:pid] ...]
"""
import http.client
import os
import random
import statistics
import sys
import time


# Where a new prompt's number goes: the first message's text, as json.dump writes it.
CONTENT = b'"content": "'


def cpu_ns(pid: str) -> int:
    """CPU time spent by every thread of process `pid` so far, in nanoseconds."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended
    return total


def main() -> None:
    body = open(sys.argv[1], "rb").read()
    fresh = os.getenv("ALTERNATE_FRESH") == "1"
    if fresh and CONTENT not in body:
        sys.exit(f"alternate: ALTERNATE_FRESH needs {CONTENT!r} in the body")
    sent = 0
    key, rounds, warmup = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    targets = [(t.split(":") + [None])[:3] for t in sys.argv[5:]]
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    conns = {name: http.client.HTTPConnection("127.0.0.1", int(port)) for name, port, _ in targets}
    times = {name: [] for name, _, _ in targets}
    cpu = {}
    order = list(targets)
    shuffle = random.Random(18).shuffle
    for round in range(warmup + rounds):
        if round == warmup:
            cpu = {name: cpu_ns(pid) for name, _, pid in targets if pid}
        shuffle(order)
        for name, _, _ in order:
            sent += 1
            data = body.replace(CONTENT, CONTENT + b"%d " % sent, 1) if fresh else body
            t0 = time.perf_counter_ns()
            conns[name].request("POST", "/v1/chat/completions", data, headers)
            r = conns[name].getresponse()
            r.read()
            elapsed_us = (time.perf_counter_ns() - t0) / 1000
            if r.status != 200:
                sys.exit(f"alternate: {name} answered {r.status}")
            if round >= warmup:
                times[name].append(elapsed_us)
    for name, _, pid in targets:
        line = f"{name} {statistics.median(times[name]):.1f}"
        if pid:
            line += f" {(cpu_ns(pid) - cpu[name]) / 1000 / rounds:.1f}"
        print(line)


if __name__ == "__main__":
    main()
