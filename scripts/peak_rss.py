"""Peak resident memory of `generate` on a GGUF file at several thread counts, against the
issue's budget: the file's size + the KV cache + 64 MiB (everything else: activations, the
tokenizer, the libraries). Reads each run's peak from the kernel (wait4's resource usage), so it
needs no tool beyond Python.
  python3 scripts/peak_rss.py GENERATE MODEL [THREADS...]      default threads: 1 2 8
"""
import os
import re
import subprocess
import sys

MIB = 1024 * 1024
PROMPT = "Once upon a time"


def peak_rss(generate, model, threads):
    """(peak resident bytes, KV cache bytes) of one generate run with `threads` threads."""
    child = subprocess.Popen([generate, "-m", model, "-p", PROMPT, "-n", "16", "-t", str(threads),
                              "--temp", "0", "-v"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, in KiB
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"peak_rss: generate failed ({child.returncode}): {stderr.strip()}")
    kv = re.search(r"kv_cache_bytes=(\d+)", stderr)
    if not kv:
        sys.exit("peak_rss: generate -v printed no kv_cache_bytes")
    return usage.ru_maxrss * 1024, int(kv.group(1))


def main(generate, model, thread_counts):
    file_bytes = os.path.getsize(model)
    print(f"Peak resident memory of `generate -p \"{PROMPT}\" -n 16` on {os.path.basename(model)} "
          f"({file_bytes / MIB:.1f} MiB):\n")
    print("| threads | peak resident MiB | file + KV cache MiB | the rest, MiB (budget 64) |")
    print("|---:|---:|---:|---:|")
    for threads in thread_counts:
        peak, kv = peak_rss(generate, model, threads)
        print(f"| {threads} | {peak / MIB:.1f} | {(file_bytes + kv) / MIB:.1f} | "
              f"{(peak - file_bytes - kv) / MIB:.1f} |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3:]] or [1, 2, 8])
