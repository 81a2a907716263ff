"""Prints the README's -march table from one scripts/bench-march run (build/bench-march)."""
import json
import os
import sys


def tokens_per_second(path):
    """{benchmark family: tok/s} of one bench_decode JSON file ({} if it is missing)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        run = json.load(f)
    return {b["run_name"].split("/")[0]: b["items_per_second"] for b in run["benchmarks"]
            if b.get("aggregate_name") in (None, "median")}


def main(folder, shape, types):
    print(f"{shape} shape, random weights, 2 threads; kvlm built with -march=native and without "
          "-march flags (baseline x86-64), one run alternating the two builds.\n")
    print("| type | decode tok/s, native | without -march | ratio "
          "| prefill tok/s, native | without -march | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for t in types:
        native = tokens_per_second(f"{folder}/{shape}-{t}-build.json")
        generic = tokens_per_second(f"{folder}/{shape}-{t}-build-generic.json")
        cells = [t]
        for family in ("BM_TypeDecode", "BM_TypePrefill"):
            n, g = native.get(family), generic.get(family)
            cells += [f"{n:.1f}" if n else "-", f"{g:.1f}" if g else "-",
                      f"{g / n:.2f}" if n and g else "-"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
