"""Split a `perf report --no-children --sort dso,sym --stdio` of an Envoy process by where
the CPU went: the filters' compiled wasm (V8's generated code: no file behind it), the
Envoy binary (Envoy, its wasm host calls and V8's runtime, one stripped binary), the C
library (memory copies, allocation), the kernel (sockets, scheduling), and the rest.

    perf-split.py PERF_REPORT_TXT
"""
import re
import sys


def category(dso: str) -> str:
    if dso in ("[unknown]", "[JIT]") or dso.startswith("[JIT]") or dso.startswith("//anon") or dso.startswith("perf-") \
            or dso.startswith("[anon"):
        return "wasm code (V8-generated)"
    if dso.startswith("[kernel") or dso == "[vdso]":
        return "kernel"
    if dso == "envoy":
        return "Envoy binary (Envoy, host calls, V8 runtime)"
    if dso.startswith("libc") or dso.startswith("ld-linux"):
        return "C library (memcpy, malloc, ...)"
    return "other: " + dso


def main() -> None:
    shares: dict[str, float] = {}
    top: dict[str, list[tuple[float, str]]] = {}
    # A sample line: "    12.34%  envoy  [.] 0x000000000123abcd"
    # (V8's code shows as "[JIT] tid N".)
    line_re = re.compile(r"^\s+([\d.]+)%\s+(\S.*?)\s+\[(.)\]\s+(.*)$")
    for line in open(sys.argv[1], errors="replace"):
        m = line_re.match(line)
        if not m:
            continue
        pct, dso, _, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
        cat = category(dso)
        shares[cat] = shares.get(cat, 0.0) + pct
        top.setdefault(cat, []).append((pct, sym))
    for cat, pct in sorted(shares.items(), key=lambda kv: -kv[1]):
        named = [f"{s} {p:.1f}%" for p, s in sorted(top[cat], reverse=True)[:3]
                 if not s.startswith("0x")]
        detail = f" (top: {', '.join(named)})" if named else ""
        print(f"  {pct:5.1f}%  {cat}{detail}")


if __name__ == "__main__":
    main()
