"""Prints the README's per-type tables from one scripts/bench-types run (build/bench-types)."""
import json
import os
import sys
from statistics import median


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
    return (pp, tg) if pp and tg else None


def median_run(results, key):
    """The result whose `key` is the median of the rounds' (the lower middle one if even)."""
    results = sorted(results, key=lambda r: r[key])
    return results[(len(results) - 1) // 2]


def main(folder, shape, rounds, types):
    peers = ("llama.cpp", "ik_llama.cpp", "ik_llama.cpp-rtr")
    print(f"{shape} shape, random weights, 2 threads; decode = 16 tokens after a 128-token prompt "
          "(llama-bench: tg128), prefill = 512 tokens (pp512). kvlm and the peers took turns "
          f"{rounds} times: each figure is the median round's, and kvlm / best peer the median "
          "of the rounds' ratios (their range in brackets).\n")
    print("| type | decode tok/s | roofline tok/s (GB/s) | of roofline | prefill tok/s "
          "| of FMA peak (GFLOP/s) | of int8 or bf16 peak (G/s) | llama.cpp pp / tg "
          "| ik_llama.cpp pp / tg | ik -rtr pp / tg | kvlm / best peer, pp | kvlm / best peer, tg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    two_threads = {}
    for t in types:
        name = f"{shape}-{t}"
        # Round i's results, or {} where a round left none: kvlm's and the peers' lists align.
        runs = [kvlm_rows(load(f"{folder}/{name}-kvlm-{i}.json") or {"benchmarks": []})
                for i in range(1, rounds + 1)]
        peer_runs = [[peer(load(f"{folder}/{name}-{p}-{i}.json")) for i in range(1, rounds + 1)]
                     for p in peers]
        # The file as kvlm loads it, then (types with an interleaved copy) as stored.
        for variant, label in ((name, t), (f"{name}-stored", f"{t}, as stored")):
            rounds_run = [(r.get(("BM_TypeDecode", variant)), r.get(("BM_TypePrefill", variant)))
                          for r in runs]
            if any(d and p for d, p in rounds_run):
                print(table_row(label, rounds_run, peer_runs))
                if variant == name:
                    d, p = median_runs(rounds_run)
                    two_threads[t] = (d["items_per_second"], p["items_per_second"])
    print("\nOne thread (the same files, after the rounds): decode against one thread's read "
          "bandwidth, prefill against one core's share of the peaks, and what the second thread "
          "adds (against the median round above).\n")
    print("| type | decode tok/s | of roofline (GB/s) | prefill tok/s | of FMA peak "
          "| of int8 or bf16 peak | 2 threads / 1, decode | 2 threads / 1, prefill |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in types:
        name = f"{shape}-{t}"
        rows = kvlm_rows(load(f"{folder}/{name}-kvlm-one-thread.json") or {"benchmarks": []})
        d1 = rows.get(("BM_TypeDecodeOneThread", name))
        p1 = rows.get(("BM_TypePrefillOneThread", name))
        if d1 and p1 and t in two_threads:
            d, p = two_threads[t]
            cells = [t, f"{d1['items_per_second']:.2f}",
                     f"{d1['fraction_of_roofline']:.2f} ({d1['GB_per_s']:.0f})",
                     f"{p1['items_per_second']:.1f}", fma_peak(p1),
                     special_peak(p1),
                     f"{d / d1['items_per_second']:.2f}x",
                     f"{p / p1['items_per_second']:.2f}x"]
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


def median_runs(rounds_run):
    """The median round's decode and prefill results, of the rounds that have both."""
    ran = [(d, p) for d, p in rounds_run if d and p]
    return (median_run([d for d, _ in ran], "items_per_second"),
            median_run([p for _, p in ran], "items_per_second"))


def table_row(label, rounds_run, peer_runs):
    """One row: kvlm's figures beside its limits and the peers' (pp512, tg128) runs. rounds_run:
    kvlm's (decode, prefill) results per round, peer_runs: each peer's (pp, tg) per round."""
    d, p = median_runs(rounds_run)
    cells = [label, f"{d['items_per_second']:.2f}",
             f"{d['roofline_tok_s']:.2f} ({d['GB_per_s']:.0f})",
             f"{d['fraction_of_roofline']:.2f}", f"{p['items_per_second']:.1f}",
             fma_peak(p, f" ({p['GFLOP_per_s'] / p['fraction_of_peak']:.0f})")]
    # Only for the types that prefill with the integer gemm (Q8_0, Q4_0 on AVX-512) or the
    # BF16 GEMM (BF16 on AVX512-BF16).
    fraction = p.get("fraction_of_int8_peak") or p.get("fraction_of_bf16_peak")
    cells.append(f"{special_peak(p)} ({p['GFLOP_per_s'] / fraction:.0f})" if fraction else "-")
    for runs in peer_runs:
        ran = [r for r in runs if r]
        cells.append(f"{median([r[0] for r in ran]):.1f} / {median([r[1] for r in ran]):.2f}"
                     if ran else "-")
    # Round by round: kvlm's figure over the best peer's in the same round.
    pp_ratios, tg_ratios = [], []
    for i, (di, pi) in enumerate(rounds_run):
        ran = [runs[i] for runs in peer_runs if runs[i]]
        if di and pi and ran:
            pp_ratios.append(pi["items_per_second"] / max(r[0] for r in ran))
            tg_ratios.append(di["items_per_second"] / max(r[1] for r in ran))
    for ratios in (pp_ratios, tg_ratios):
        cells.append(f"{median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
                     if ratios else "-")
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:])
