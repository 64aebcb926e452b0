"""Sum a callgrind profile of sluice-chain-profile per filter: each filter's lifecycle
handlers' inclusive instruction counts (`callgrind_annotate --inclusive=yes` on stdin),
per request.

    callgrind_annotate --inclusive=yes OUT | callgrind-split.py REQUESTS
"""
import re
import sys

LINE = re.compile(
    r"^\s*([\d,]+)\s+\([\s\d.]+%\)\s+\S*<sluice_([a-z_]+)::lifecycle::(\w+) as "
    r"sluice_common::host::Lifecycle>::(on_\w+)")
NAMES = {
    "key_auth": "key-auth",
    "rate_limit": "rate-limit (both stages)",
    "model_router": "model-router",
    "pii_redaction": "pii-redaction",
    "token_counter": "token-counter",
    "response_cache": "response-cache",
    "endpoint_picker": "endpoint-picker",
}


def main() -> None:
    requests = int(sys.argv[1])
    totals: dict[str, int] = {}
    handlers: dict[str, list[tuple[str, int]]] = {}
    for line in sys.stdin:
        m = LINE.match(line)
        if not m:
            continue
        n, crate, handler = int(m.group(1).replace(",", "")), m.group(2), m.group(4)
        totals[crate] = totals.get(crate, 0) + n
        handlers.setdefault(crate, []).append((handler, n))
    print(f"instructions per request, natively (callgrind, {requests} requests):")
    print(f"| {'filter':<26} | {'instructions':>12} | by handler")
    print(f"|{'-' * 28}|{'-' * 14}|---")
    for crate, name in NAMES.items():
        if crate not in totals:
            continue
        detail = ", ".join(f"{h} {n // requests:,}"
                           for h, n in sorted(handlers[crate], key=lambda x: -x[1]))
        print(f"| {name:<26} | {totals[crate] // requests:>12,} | {detail}")
    print(f"| {'all filters':<26} | {sum(totals.values()) // requests:>12,} |")


if __name__ == "__main__":
    main()
