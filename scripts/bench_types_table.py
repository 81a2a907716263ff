"""Prints the README's per-type table from one scripts/bench-types run (build/bench-types)."""
import json
import os
import sys


def load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read()
    return json.loads(text) if text.strip() else None


def kvlm_rows(run):
    """{(benchmark, file variant): result}, e.g. ("BM_TypeDecode", "tinyllama-1.1b-Q4_0-stored")."""
    rows = {}
    for b in run["benchmarks"]:
        if b.get("aggregate_name") in (None, "median"):
            parts = b["run_name"].split("/")
            rows[(parts[0], parts[1])] = b
    return rows


def peer(run):
    """(pp512, tg128) tokens/s from llama-bench's JSON, or None."""
    if not run:
        return None
    pp = next((r["avg_ts"] for r in run if r["n_prompt"] > 0 and r["n_gen"] == 0), None)
    tg = next((r["avg_ts"] for r in run if r["n_gen"] > 0 and r["n_prompt"] == 0), None)
    return pp, tg


def main(folder, shape, types):
    peers = ("llama.cpp", "ik_llama.cpp", "ik_llama.cpp-rtr")
    print(f"{shape} shape, random weights, 2 threads; decode = 16 tokens after a 128-token prompt "
          "(llama-bench: tg128), prefill = 512 tokens (pp512).\n")
    print("| type | decode tok/s | roofline tok/s (GB/s) | of roofline | prefill tok/s "
          "| of FMA peak (GFLOP/s) | of int8 or bf16 peak (G/s) | llama.cpp pp / tg "
          "| ik_llama.cpp pp / tg | ik -rtr pp / tg | kvlm / best peer pp, tg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in types:
        name = f"{shape}-{t}"
        run = load(f"{folder}/{name}-kvlm.json")
        if not run:
            continue
        rows = kvlm_rows(run)
        peer_runs = [peer(load(f"{folder}/{name}-{name_peer}.json")) for name_peer in peers]
        # The file as kvlm loads it, then (types with an interleaved copy) as stored.
        for variant, label in ((name, t), (f"{name}-stored", f"{t}, as stored")):
            d, p = rows.get(("BM_TypeDecode", variant)), rows.get(("BM_TypePrefill", variant))
            if d and p:
                print(table_row(label, d, p, peer_runs))
    print(f"\nOne thread (the same run and files): decode against one thread's read bandwidth, "
          "prefill against one core's share of the peaks, and what the second thread adds.\n")
    print("| type | decode tok/s | of roofline (GB/s) | prefill tok/s | of FMA peak "
          "| of int8 or bf16 peak | 2 threads / 1, decode | 2 threads / 1, prefill |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in types:
        name = f"{shape}-{t}"
        rows = kvlm_rows(load(f"{folder}/{name}-kvlm.json") or {"benchmarks": []})
        d1 = rows.get(("BM_TypeDecodeOneThread", name))
        p1 = rows.get(("BM_TypePrefillOneThread", name))
        d, p = rows.get(("BM_TypeDecode", name)), rows.get(("BM_TypePrefill", name))
        if d1 and p1 and d and p:
            cells = [t, f"{d1['items_per_second']:.2f}",
                     f"{d1['fraction_of_roofline']:.2f} ({d1['GB_per_s']:.0f})",
                     f"{p1['items_per_second']:.1f}", fma_peak(p1),
                     special_peak(p1),
                     f"{d['items_per_second'] / d1['items_per_second']:.2f}x",
                     f"{p['items_per_second'] / p1['items_per_second']:.2f}x"]
            print("| " + " | ".join(cells) + " |")


def fma_peak(p, suffix=""):
    """The prefill's fraction of the FMA peak, for the types whose GEMM runs on FMAs."""
    if p.get("fraction_of_int8_peak") or p.get("fraction_of_bf16_peak"):
        return "-"
    return f"{p['fraction_of_peak']:.2f}{suffix}"


def special_peak(p):
    """The prefill's fraction of the int8 or bf16 peak, for the types whose GEMM runs on one."""
    for kind in ("int8", "bf16"):
        fraction = p.get(f"fraction_of_{kind}_peak")
        if fraction:
            return f"{fraction:.2f} {kind}"
    return "-"


def table_row(label, d, p, peer_runs):
    """One row: kvlm's figures beside its limits and the peers' (pp512, tg128) runs."""
    cells = [label, f"{d['items_per_second']:.2f}",
             f"{d['roofline_tok_s']:.2f} ({d['GB_per_s']:.0f})",
             f"{d['fraction_of_roofline']:.2f}", f"{p['items_per_second']:.1f}",
             fma_peak(p, f" ({p['GFLOP_per_s'] / p['fraction_of_peak']:.0f})")]
    # Only for the types that prefill with the integer gemm (Q8_0, Q4_0 on AVX-512) or the
    # BF16 GEMM (BF16 on AVX512-BF16).
    fraction = p.get("fraction_of_int8_peak") or p.get("fraction_of_bf16_peak")
    cells.append(f"{special_peak(p)} ({p['GFLOP_per_s'] / fraction:.0f})" if fraction else "-")
    best_pp = best_tg = 0.0
    for r in peer_runs:
        if r and r[0] and r[1]:
            cells.append(f"{r[0]:.1f} / {r[1]:.2f}")
            best_pp, best_tg = max(best_pp, r[0]), max(best_tg, r[1])
        else:
            cells.append("-")
    if best_pp and best_tg:
        cells.append(f"{p['items_per_second'] / best_pp:.2f}x, "
                     f"{d['items_per_second'] / best_tg:.2f}x")
    else:
        cells.append("-")
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
