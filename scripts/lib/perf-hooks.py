"""Split a DWARF-call-graph profile of an Envoy running the native build
(`scripts/bench-chain.sh` with BENCH_PERF=native_chain BENCH_PERF_DATA=FILE) by the
module's frames each sample ran under: the filters' own code by filter and function, and
Envoy's work by the module function that called into it (the stripped Envoy binary names
nothing itself, but the module's frame above it says what was asked: a filter-state
write, a counter update, a header read). Samples with no module frame are Envoy's own.

    perf script -i FILE | perf-hooks.py [TOP (25)]
"""
import collections
import re
import sys

MODULE = "libnative_filters.so"
top = int(sys.argv[1]) if len(sys.argv) > 1 else 25
# A frame line of `perf script`: address, symbol(+offset), (dso).
FRAME = re.compile(r"^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$")


def short(symbol: str) -> str:
    """A Rust symbol without its hash and generic arguments, cut to its last three parts."""
    symbol = re.sub(r"\+0x[0-9a-f]+$", "", symbol)
    symbol = re.sub(r"::h[0-9a-f]{16}$", "", symbol)
    depth, out = 0, []
    for ch in symbol:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    parts = [p for p in "".join(out).split("::") if p]
    return "::".join(parts[-3:]) or symbol


def filter_of(frames) -> str:
    """The filter crate a stack runs in: the outermost sluice_<filter> frame."""
    for symbol, dso in reversed(frames):
        m = re.search(r"sluice_([a-z_]+)::", symbol)
        if dso.endswith(MODULE) and m and m.group(1) not in ("native", "common", "proxy", "filters"):
            return m.group(1)
    return "glue"


def main() -> None:
    total = 0
    own = collections.Counter()
    module_code = collections.Counter()
    called = collections.Counter()
    by_filter = collections.Counter()
    frames = []

    def flush():
        nonlocal total
        if not frames:
            return
        total += 1
        inside = [i for i, (_, dso) in enumerate(frames) if dso.endswith(MODULE)]
        if not inside:
            leaf_dso = frames[0][1]
            own["kernel" if leaf_dso.startswith("[kernel") else "Envoy"] += 1
            return
        first = inside[0]
        by_filter[filter_of(frames)] += 1
        if first == 0:
            module_code[short(frames[0][0])] += 1
        else:
            called[short(frames[first][0])] += 1

    for line in sys.stdin:
        if not line.strip():
            flush()
            frames = []
            continue
        m = FRAME.match(line)
        if m:
            frames.append((m.group(1), m.group(2)))
    flush()
    if not total:
        sys.exit("perf-hooks: no samples")
    pct = lambda n: f"{100 * n / total:5.1f}%"
    print(f"{total} samples")
    print(f"outside the module's hooks: Envoy {pct(own['Envoy'])}, kernel {pct(own['kernel'])}")
    inside = sum(module_code.values()) + sum(called.values())
    print(f"under the module's hooks: {pct(inside)} (the filters' code {pct(sum(module_code.values()))},"
          f" Envoy, the C library and the kernel called from it {pct(sum(called.values()))})")
    print("\nunder the hooks, by filter:")
    for name, n in by_filter.most_common():
        print(f"  {pct(n)}  {name}")
    print(f"\ncalled from the module, by the module's function that called (top {top}):")
    for name, n in called.most_common(top):
        print(f"  {pct(n)}  {name}")
    print(f"\nthe module's own code, by function (top {top}):")
    for name, n in module_code.most_common(top):
        print(f"  {pct(n)}  {name}")


main()
