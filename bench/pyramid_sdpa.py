"""PyTorch SDPA (FlashAttention backend, fp16, causal) at the shapes of bench/pyramid.bench.ts,
the dense baseline pyramidAttention is measured against.

Usage: python3 bench/pyramid_sdpa.py OUT.json [--tokens 8192,32768,65536] [--heads 32] [--dim 128]

Writes {"bench": "pyramid_sdpa", "device", "torch", "rows": [{tokens, heads, dim, dtype,
causal, backend, median_ms, samples_ms}]}; pass the file to the pyramid benchmark with
KVSQUASH_SDPA_JSON=OUT.json to get the "SDPA / this" column. Timed with CUDA events around
each call after warm-up; the median of the samples is reported.
"""
import argparse
import json
import statistics
import sys


def time_sdpa(torch, sdpa_kernel, backend, tokens, heads, dim, warmup, iterations):
    shape = (1, heads, tokens, dim)
    generator = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.float16, generator=generator) for _ in range(3))
    samples = []
    with sdpa_kernel(backend):
        for i in range(warmup + iterations):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            end.record()
            torch.cuda.synchronize()
            if i >= warmup:
                samples.append(start.elapsed_time(end))
    del q, k, v
    torch.cuda.empty_cache()
    return samples


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSON file to write")
    parser.add_argument("--tokens", default="8192,32768,65536", help="comma-separated sequence lengths (queries = keys)")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args(argv)

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not torch.cuda.is_available():
        sys.exit("pyramid_sdpa.py: no CUDA device visible to PyTorch")
    rows = []
    for tokens in (int(t) for t in args.tokens.split(",")):
        samples = time_sdpa(torch, sdpa_kernel, SDPBackend.FLASH_ATTENTION, tokens, args.heads, args.dim, args.warmup, args.iterations)
        row = {
            "tokens": tokens, "heads": args.heads, "dim": args.dim, "dtype": "f16", "causal": True, "backend": "flash",
            "median_ms": statistics.median(samples), "samples_ms": samples,
        }
        rows.append(row)
        print(f"SDPA flash fp16 causal T={tokens} H={args.heads} D={args.dim}: {row['median_ms']:.3f} ms", flush=True)
    result = {"bench": "pyramid_sdpa", "device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
