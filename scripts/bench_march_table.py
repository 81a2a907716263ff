"""Prints the README's -march table from one scripts/bench-march run (build/bench-march)."""
import json
import os
import sys


def results(path):
    """{benchmark family: result} of one bench_decode JSON file ({} if it is missing)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        run = json.load(f)
    return {b["run_name"].split("/")[0]: b for b in run["benchmarks"]
            if b.get("aggregate_name") in (None, "median")}


def main(folder, shape, types):
    print(f"{shape} shape, random weights, 2 threads; kvlm built with -march=native and without "
          "-march flags (baseline x86-64), one run alternating the two builds. Decode moves with "
          "the read bandwidth, which drifts between the two runs: its last column compares the "
          "fractions of the roofline each run measured beside itself.\n")
    print("| type | decode tok/s, native | without -march | ratio | ratio of roofline fractions "
          "| prefill tok/s, native | without -march | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in types:
        native = results(f"{folder}/{shape}-{t}-build.json")
        generic = results(f"{folder}/{shape}-{t}-build-generic.json")
        cells = [t]
        for family in ("BM_TypeDecode", "BM_TypePrefill"):
            n, g = native.get(family), generic.get(family)
            n_tok, g_tok = (r["items_per_second"] if r else None for r in (n, g))
            cells += [f"{n_tok:.1f}" if n else "-", f"{g_tok:.1f}" if g else "-",
                      f"{g_tok / n_tok:.2f}" if n and g else "-"]
            if family == "BM_TypeDecode":
                cells.append(f"{g['fraction_of_roofline'] / n['fraction_of_roofline']:.2f}"
                             if n and g else "-")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
