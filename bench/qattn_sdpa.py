#!/usr/bin/env python3
"""PyTorch SDPA decode times (fp16) on the shapes of bench/qattn.bench.ts, on the same GPU.

Writes bench/results/qattn-sdpa-<device>-<date>.json; `npm run bench -- qattn`, run the same
day on the same device, reads it and adds an "x SDPA" column. One query token at the end of
the sequence sees every key, so no mask is needed (is_causal would align the query with the
first key). GQA uses enable_gqa (PyTorch >= 2.5) or K/V repeated outside the timed region.
Times: CUDA events around each call, median of 20 after 3 warm-up calls.

Usage: python3 bench/qattn_sdpa.py [--quick]   (--quick: up to 32K tokens)
"""
import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shapes(quick):
    tokens = (4096, 32768) if quick else (4096, 32768, 131072)
    return [dict(B=b, Hq=32, Hkv=h, T=t, D=128) for t in tokens for b in (1, 8) for h in (8, 32)]


def time_ms(torch, run, warmup=3, iterations=20):
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def measure(torch, F, s):
    dev = torch.device("cuda")
    q = torch.randn(s["B"], s["Hq"], 1, s["D"], device=dev, dtype=torch.float16)
    k = torch.randn(s["B"], s["Hkv"], s["T"], s["D"], device=dev, dtype=torch.float16)
    v = torch.randn_like(k)
    try:
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        run = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # noqa: E731
    except TypeError:  # PyTorch < 2.5: repeat the KV heads once, outside the timing
        group = s["Hq"] // s["Hkv"]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        run = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    return time_ms(torch, run)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("(PyTorch is not installed: SDPA not measured)")
        return 0
    if not torch.cuda.is_available():
        print("(no CUDA device: SDPA not measured)")
        return 0

    device = torch.cuda.get_device_name(0)
    rows = []
    for s in shapes(args.quick):
        try:
            ms = measure(torch, F, s)
        except torch.cuda.OutOfMemoryError:
            ms = None
        torch.cuda.empty_cache()
        kv_bytes = 2 * s["B"] * s["Hkv"] * s["T"] * s["D"] * 2
        row = dict(s, ms=ms, gbps=None if ms is None else kv_bytes / (ms * 1e6))
        rows.append(row)
        shown = "out of memory" if ms is None else f"{ms:.4f} ms  {row['gbps']:.1f} GB/s (K+V fp16)"
        print(f"B{s['B']} Hq{s['Hq']} Hkv{s['Hkv']} T{s['T']} D{s['D']}: {shown}")

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    now = datetime.datetime.now(datetime.timezone.utc)
    result = dict(bench="qattn-sdpa", device=device, date=now.isoformat(), commit=commit or "unknown",
                  torch=torch.__version__, cuda=torch.version.cuda, rows=rows)
    out_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    # the file name rule of bench/common/report.ts writeResult
    path = os.path.join(out_dir, f"qattn-sdpa-{re.sub('[^a-z0-9]+', '-', device, flags=re.I).lower()}-{now.date().isoformat()}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
