#!/usr/bin/env python3
"""Attention reference for bench_kernels: PyTorch's scaled_dot_product_attention on the same shapes.

Same cases as bench_kernels' plain attention cases (no mask, no dropout): BERT-base (12 heads) and
BERT-large (16 heads), head_dim 64, 16384 tokens per batch, seq 128 and 512, bf16, q/k/v read from
one fused [batch, seq, 3, heads, head_dim] QKV buffer as HF's BERT lays them out (strided views,
no copies). Backends: flash, cuDNN and memory-efficient, each forced with sdpa_kernel (a backend
that refuses a shape is recorded, not fatal). Timing: CUDA events, median of --repeats runs, L2
flushed (2x its size written) before each, after warm-up; backward is torch.autograd.grad on a
retained graph (the dq/dk/dv kernels, no forward).

FLOPs (FlashAttention's convention, the same formula as bench_kernels): forward
4 * batch * heads * seq^2 * head_dim; backward 2.5x forward.

    python3 bench/bench_attention_torch.py [--json FILE] [--ours bench_kernels.json] [--repeats N]
    python3 bench/bench_attention_torch.py --reference FILE --ours bench_kernels.json

With --ours, prints bench_kernels' attention numbers beside these (side by side, per case). With
--reference, the torch numbers are read from an earlier --json instead of measured (no torch needed):
the side-by-side of a device run's two JSON files, re-printed anywhere. tests/emulated/
test_bench_kernels_smoke.py runs that path on the JSON of bench_kernels --smoke in every suite.
"""
import argparse
import json
import statistics
import sys

MODELS = [("bert-base", 768, 12), ("bert-large", 1024, 16)]
TOKENS = 16384
SEQ_LENS = [128, 512]


def attention_flops(batch, heads, seq, head_dim):
    return 4.0 * batch * heads * seq * seq * head_dim


def run_reference(repeats):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: torch.cuda.is_available() is False")
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(0)
    l2_bytes = getattr(props, "L2_cache_size", 64 << 20)
    flush = torch.empty(max(2 * l2_bytes, 1 << 20), dtype=torch.uint8, device=device)

    def time_ms(fn, warmup=3):
        for _ in range(warmup):
            fn()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        stops = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        for i in range(repeats):
            flush.fill_(i & 0xFF)
            starts[i].record()
            fn()
            stops[i].record()
        torch.cuda.synchronize()
        times = sorted(s.elapsed_time(e) for s, e in zip(starts, stops))
        return statistics.median(times), times[0]

    backends = [
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
    ]
    results = []
    for model, hidden, heads in MODELS:
        head_dim = hidden // heads
        for seq in SEQ_LENS:
            batch = TOKENS // seq
            generator = torch.Generator(device=device).manual_seed(seq * 1000 + heads)
            qkv = torch.rand(batch, seq, 3, heads, head_dim, device=device, dtype=torch.bfloat16,
                             generator=generator) * 4 - 2
            # [batch, heads, seq, head_dim] strided views of the fused buffer, as leaves.
            q, k, v = (qkv[:, :, i].transpose(1, 2).detach().requires_grad_(True) for i in range(3))
            dout = (torch.rand(batch, heads, seq, head_dim, device=device, dtype=torch.bfloat16,
                               generator=generator) - 0.5) * 2e-2
            flops = attention_flops(batch, heads, seq, head_dim)
            shape = f"batch {batch}, seq {seq}, heads {heads}, head_dim {head_dim}, fused qkv"
            for backend_name, backend in backends:
                base = {"model": model, "seq": seq, "backend": backend_name, "shape": shape}
                try:
                    with sdpa_kernel([backend]):
                        with torch.no_grad():
                            fwd_ms, fwd_min = time_ms(lambda: F.scaled_dot_product_attention(q, k, v))
                        out = F.scaled_dot_product_attention(q, k, v)
                        if not torch.isfinite(out).all():
                            raise RuntimeError("non-finite forward output")
                        bwd_ms, bwd_min = time_ms(
                            lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
                    results.append(dict(base, name=f"attention_fwd/{model}/s{seq}", status="ok",
                                        median_ms=fwd_ms, min_ms=fwd_min, flops=flops,
                                        tflop_per_s=flops / (fwd_ms * 1e-3) / 1e12))
                    results.append(dict(base, name=f"attention_bwd/{model}/s{seq}", status="ok",
                                        median_ms=bwd_ms, min_ms=bwd_min, flops=2.5 * flops,
                                        tflop_per_s=2.5 * flops / (bwd_ms * 1e-3) / 1e12))
                except Exception as error:  # a backend refusing a shape is a result, not a crash
                    message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
                    for direction in ("fwd", "bwd"):
                        results.append(dict(base, name=f"attention_{direction}/{model}/s{seq}",
                                            status="error", error=message))
            del qkv, q, k, v, dout
            torch.cuda.empty_cache()
    return {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "command": " ".join(sys.argv),
        "repeats": repeats,
        "cases": results,
    }


def load_reference(path):
    """An earlier --json of this script, checked enough that the printers cannot fail on it."""
    try:
        with open(path) as f:
            reference = json.load(f)
    except (OSError, ValueError) as error:
        raise SystemExit(f"bench_attention_torch: cannot read --reference {path}: {error}")
    cases = reference.get("cases") if isinstance(reference, dict) else None
    if not isinstance(cases, list):
        raise SystemExit(f"bench_attention_torch: {path}: no 'cases' list (not a --json of this script)")
    for index, case in enumerate(cases):
        if not isinstance(case, dict):
            raise SystemExit(f"bench_attention_torch: {path}: cases[{index}] is not an object")
        required = ("name", "backend", "status") + (("median_ms", "tflop_per_s") if case.get("status") == "ok"
                                                    else ("error",))
        missing = [key for key in required if key not in case]
        if missing:
            raise SystemExit(f"bench_attention_torch: {path}: cases[{index}] lacks {', '.join(missing)}")
    for key in ("device", "torch", "cudnn"):
        reference.setdefault(key, "?")
    return reference


def print_reference(reference):
    print(f"device: {reference['device']}, torch {reference['torch']}, cuDNN {reference['cudnn']}")
    print(f"{'case':32} {'backend':10} {'median ms':>10} {'TFLOP/s':>9}")
    for case in reference["cases"]:
        if case["status"] == "ok":
            print(f"{case['name']:32} {case['backend']:10} {case['median_ms']:10.4f} {case['tflop_per_s']:9.1f}")
        else:
            print(f"{case['name']:32} {case['backend']:10} {'-':>10} {'-':>9}  {case['error'][:80]}")


def fixed(value, width, decimals):
    """value in width characters, giving up decimals before the column grows (1234.5 ms as 1234.50)."""
    digits = len(f"{value:.0f}")
    decimals = max(0, min(decimals, width - digits - 1))
    return f"{value:{width}.{decimals}f}"


def print_side_by_side(reference, ours):
    """bench_kernels' attention cases beside the best and each torch backend."""
    ceiling = ours.get("ceilings", {}).get("gemm_bf16_tflop_per_s")
    print()
    print("side by side (TFLOP/s; ms in brackets)" +
          (f"; GEMM ceiling {ceiling:.0f} TFLOP/s" if ceiling else "") +
          ("; ours from bench_kernels --smoke: not measurements" if ours.get("smoke") else ""))
    backends = sorted({c["backend"] for c in reference["cases"]})
    ours_by_name = {c["name"]: c for c in ours.get("cases", [])}
    names = []
    for case in reference["cases"]:
        if case["name"] not in names:
            names.append(case["name"])

    def cell(case):
        if not case or case.get("status") != "ok":
            return f"{'-':>18}"
        return f"{fixed(case['tflop_per_s'], 8, 1)} ({fixed(case['median_ms'], 7, 3)})"

    # Our attention has several kernels per direction (bench_kernels' attention_fwd / _bwd = wmma,
    # attention_fwd_mma / _bwd_mma = mma.sync, attention_bwd_mma_recompute_dq = mma.sync's kernel pair
    # where _bwd_mma is the fused kernel, attention_fwd_mma_baseline = mma.sync's forward one block an
    # item where _fwd_mma is the persistent kernel): each gets a row against the same torch numbers.
    rows = []
    for name in names:
        rows.append((name, name))
        family, _, rest = name.partition("/")
        for twin in ("_mma", "_mma_baseline", "_mma_recompute_dq"):
            if family + twin + "/" + rest in ours_by_name:
                rows.append((family + twin + "/" + rest, name))
    width = max([32] + [len(ours_name) for ours_name, _ in rows])
    print(f"{'case':{width}} {'ours':>18}" + "".join(f" {b:>18}" for b in backends) + f" {'ours/best':>10}")
    mismatched = []
    for ours_name, name in rows:
        mine = ours_by_name.get(ours_name)
        theirs = {c["backend"]: c for c in reference["cases"] if c["name"] == name}
        best = min((c["median_ms"] for c in theirs.values() if c["status"] == "ok"), default=None)
        # Both sides name their shape alike ("batch B, seq S, heads H, head_dim D, fused qkv"); a ratio
        # only where they are the same (bench_kernels --tokens / --smoke change the batch).
        our_shape = (mine or {}).get("shape")
        their_shapes = {c.get("shape") for c in theirs.values()} - {None}
        same_shape = len(their_shapes | ({our_shape} - {None})) <= 1
        if not same_shape:
            mismatched.append(f"{ours_name}: ours {our_shape!r}, torch {' / '.join(sorted(their_shapes))!r}")
        ratio = "-"
        if mine and mine.get("status") == "ok" and best and same_shape:
            ratio = f"{best / mine['median_ms']:.2f}x"
        print(f"{ours_name:{width}} {cell(mine)}" + "".join(f" {cell(theirs.get(b))}" for b in backends) +
              f" {ratio:>10}")
    print("ours/best > 1: ours is faster than the fastest torch backend.")
    for line in mismatched:
        print(f"no ratio, the shapes differ: {line}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the reference numbers here")
    parser.add_argument("--ours", help="bench_kernels --json output to print beside the reference")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per case (median reported)")
    parser.add_argument("--reference", help="read the torch numbers from this earlier --json instead of measuring")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.reference and args.json:
        parser.error("--reference reads the numbers --json would write; give one of them")

    reference = load_reference(args.reference) if args.reference else run_reference(args.repeats)
    print_reference(reference)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reference, f, indent=2)
        print(f"wrote {args.json}")
    if args.ours:
        try:
            with open(args.ours) as f:
                ours = json.load(f)
        except (OSError, ValueError) as error:
            print(f"cannot read {args.ours}: {error}", file=sys.stderr)
            return 1
        print_side_by_side(reference, ours)
    failed = [c for c in reference["cases"] if c["status"] != "ok" and c["backend"] == "flash"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
