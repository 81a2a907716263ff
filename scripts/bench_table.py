"""Prints the README's benchmark table from one bench_decode JSON run (median of repetitions)."""
import json
import statistics
import sys


def main(path):
    with open(path) as f:
        run = json.load(f)
    rows = {}
    for b in run["benchmarks"]:
        if b.get("aggregate_name") not in (None, "median"):
            continue
        name = b["run_name"]
        if b.get("aggregate_name") == "median" or name not in rows:
            rows[name] = b
    ctx = run["context"]
    print(f"Run on {ctx['num_cpus']} CPUs at {ctx['mhz_per_cpu']} MHz, {ctx['date']}.\n")

    def get(name):
        return rows.get(name)

    print("| tokens after the 8-token prompt | cached tok/s | uncached tok/s | cached / uncached |")
    print("|---:|---:|---:|---:|")
    for n in (16, 32, 64, 128, 256):
        c, u = get(f"BM_DecodeCached/{n}"), get(f"BM_DecodeUncached/{n}")
        if c and u:
            ci, ui = c["items_per_second"], u["items_per_second"]
            print(f"| {n} | {ci:,.0f} | {ui:,.0f} | {ci / ui:.1f}x |")
    print()
    print("| attention step at start_pos | time (us) | K/V read (GB/s) |")
    print("|---:|---:|---:|")
    for p in (64, 256, 1024, 4096, 8192):
        a = get(f"BM_AttentionStep/{p}")
        if a:
            print(f"| {p} | {a['real_time']:.1f} | {a['bytes_per_second'] / 1e9:.1f} |")
    print()
    cached = {p: get(f"BM_CachedStep/{p}/real_time") for p in (16, 256, 1024)}
    uncached = get("BM_UncachedStep/256/real_time")
    if all(cached.values()) and uncached:
        ms = {p: b["real_time"] for p, b in cached.items()}
        print("| stories110M shape, F32, one decode step at position | 16 | 256 | 1024 |")
        print("|---|---:|---:|---:|")
        print(f"| cached, ms | {ms[16]:.2f} | {ms[256]:.2f} | {ms[1024]:.2f} |")
        print(f"| uncached (re-runs the prefix), ms | | {uncached['real_time']:.1f} | |")
        print(f"\nAt position 1024 a cached step costs {ms[1024] / ms[16]:.2f}x one at 16; at 256 the "
              f"uncached step costs {uncached['real_time'] / ms[256]:.1f}x the cached one.\n")
    roof = get("BM_DecodeRoofline/real_time")
    if roof:
        print("| stories110M shape, F32, decode | tok/s | roofline tok/s | fraction of roofline |")
        print("|---|---:|---:|---:|")
        print(f"| {roof['MB_per_token']:.0f} MB read per token, read bandwidth "
              f"{roof['GB_per_s']:.1f} GB/s | {roof['items_per_second']:.1f} | "
              f"{roof['roofline_tok_s']:.1f} | {roof['fraction_of_roofline']:.2f} |")
    peak = get("BM_PeakFlops/iterations:1/manual_time")
    prefill = get("BM_Prefill/512/real_time")
    if peak and prefill:
        print()
        print("| stories110M shape, F32, 512-token prefill | tok/s | GFLOP/s | fraction of peak |")
        print("|---|---:|---:|---:|")
        print(f"| peak FMA rate {peak['GFLOP_per_s']:.0f} GFLOP/s | "
              f"{prefill['items_per_second']:,.0f} | {prefill['GFLOP_per_s']:.0f} | "
              f"{prefill['fraction_of_peak']:.2f} |")

    f32 = get("BM_KvTypeDecode/0/real_time")
    if f32:
        print()
        print("| `kv_type` | cache MB at 2048 positions | decode at 2048, tok/s | vs F32 |")
        print("|---|---:|---:|---:|")
        for type_id in (0, 1, 30, 8):
            k = get(f"BM_KvTypeDecode/{type_id}/real_time")
            if k:
                print(f"| {k['label']} | {k['kv_cache_MB']:.1f} | {k['items_per_second']:.1f} | "
                      f"{k['items_per_second'] / f32['items_per_second']:.2f} |")
    prefill_again = get("BM_SessionReprefill/512/real_time")
    if prefill_again:
        print()
        print("| a session holding 512 tokens, stories110M shape | time (ms) | vs prefilling again |")
        print("|---|---:|---:|")
        print(f"| prefill the 512 tokens again | {prefill_again['real_time']:.1f} | 1x |")
        load, fork = get("BM_SessionLoad/512/real_time"), get("BM_SessionFork/512/real_time")
        if load:
            print(f"| `load()` from memory ({load['file_MB']:.1f} MB) | {load['real_time']:.1f} | "
                  f"{prefill_again['real_time'] / load['real_time']:.1f}x faster |")
        if fork:
            print(f"| `fork()` ({fork['session_MB']:.1f} MB session) | {fork['real_time']:.1f} | "
                  f"{prefill_again['real_time'] / fork['real_time']:.1f}x faster |")
    batched = sorted({n.split("/")[1] for n in rows if n.startswith("BM_BatchedDecode/")})
    if batched:
        print()
        print("| sessions decoding together | aggregate tok/s | per session tok/s | vs 1 session |")
        print("|---|---:|---:|---:|")
        for model in batched:
            alone = get(f"BM_BatchedDecode/{model}/1/iterations:3/real_time")
            for b in (1, 2, 4, 8, 16):
                r = get(f"BM_BatchedDecode/{model}/{b}/iterations:3/real_time")
                if r and alone:
                    print(f"| {model}, {b} | {r['items_per_second']:.1f} | "
                          f"{r['per_session_tok_s']:.1f} | "
                          f"{r['items_per_second'] / alone['items_per_second']:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/bench.json")
