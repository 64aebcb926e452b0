"""What a `wrk --latency` run printed, reduced to requests/s, p50 and p99 (microseconds) and
the count of non-2xx answers. Imported by the bench scripts' reports, or run on a file (or
standard input) to print `rps p50_us p99_us non2xx`.

    wrk_summary.py [WRK_OUTPUT]
"""
import re
import sys


def micros(value: str) -> float:
    n, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()
    return float(n) * {"us": 1, "ms": 1000, "s": 1e6}[unit]


def summary(text: str) -> tuple[float, float, float, int]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = micros(re.search(r"\s50%\s+(\S+)", text).group(1))
    p99 = micros(re.search(r"\s99%\s+(\S+)", text).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return rps, p50, p99, int(errors.group(1)) if errors else 0


if __name__ == "__main__":
    text = open(sys.argv[1]).read() if len(sys.argv) > 1 else sys.stdin.read()
    print(*summary(text))
