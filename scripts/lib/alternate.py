"""Send the same chat request to several gateways in turn, one kept-alive connection each,
and print each one's median latency in microseconds (`name median_us` per line).

Costs of tens of microseconds sit below the drift of this machine between separate runs;
alternating request by request makes the drift hit every target alike.

    alternate.py BODY_FILE KEY ROUNDS WARMUP_ROUNDS name:port [name:port ...]
"""
import http.client
import statistics
import sys
import time


def main() -> None:
    body = open(sys.argv[1], "rb").read()
    key, rounds, warmup = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    targets = [t.split(":") for t in sys.argv[5:]]
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    conns = {name: http.client.HTTPConnection("127.0.0.1", int(port)) for name, port in targets}
    times = {name: [] for name, _ in targets}
    for round in range(warmup + rounds):
        for name, _ in targets:
            t0 = time.perf_counter_ns()
            conns[name].request("POST", "/v1/chat/completions", body, headers)
            r = conns[name].getresponse()
            r.read()
            elapsed_us = (time.perf_counter_ns() - t0) / 1000
            if r.status != 200:
                sys.exit(f"alternate: {name} answered {r.status}")
            if round >= warmup:
                times[name].append(elapsed_us)
    for name, values in times.items():
        print(f"{name} {statistics.median(values):.1f}")


if __name__ == "__main__":
    main()
