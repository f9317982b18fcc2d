#!/usr/bin/env python3
"""GPU training throughput: bench_train_step --device cuda (ours) beside Hugging Face BertForPreTraining on the
same GPU, shapes and batch, in the same run.

Shapes (batch sizes that fit an 80 GB H100 for every variant; the same batch for both sides):
  base-128   BERT-base  (768 hidden, 12 layers, 12 heads, 3072 FFN)  seq 128, batch 128
  base-512   BERT-base                                                seq 512, batch 32
  large-128  BERT-large (1024 hidden, 24 layers, 16 heads, 4096 FFN)  seq 128, batch 64
  large-512  BERT-large                                               seq 512, batch 16
vocab 30522 (BERT's), dropout 0.1 everywhere. Also, only when asked for: tiny (hidden 64, 2 layers, vocab 300,
seq 32, batch 4), the suite's shape for its run of this driver (below).

Variants, each in its own subprocess with a timeout (a failed or timed-out variant is recorded, not fatal):
  ours              bench_train_step --device cuda: bf16 activations/working weights, fp32 master weights,
                    grads and AdamW moments; MLM head on the masked rows only; one step = zero_grads,
                    set_dropout, upload_batch, forward_backward, optimizer_step (clip 1.0 on the device),
                    then a host wait (read_grad_norm) every step, like HF's synchronize below (bert_train
                    itself waits only when it logs)
  hf_sdpa           BertForPreTraining (fp32 weights) under torch.autocast(bf16), attn_implementation "sdpa"
  hf_sdpa_compile   the same model wrapped in torch.compile (default mode; compiling happens in the warm-up)
  hf_eager          the same with attn_implementation "eager"
  HF step = zero_grad(set_to_none), forward under autocast, loss.backward(), clip_grad_norm_(1.0),
  torch.optim.AdamW(lr 1e-4, eps 1e-8, weight_decay 0.01, fused=True) with HF Trainer's groups (no decay on
  biases and LayerNorm weights), then torch.cuda.synchronize(). TF32 is allowed for any fp32 matmul.
Both sides: W warm-up steps, then N timed; step time = host wall clock of one step ending in a device wait;
the median gives tokens/s = B*S / step and sequences/s = B / step.

FLOPs (engine/bert.h bert_training_flops, ported in hf_bench_common.py; the same formula for everyone):
  model FLOPs     mlm_rows = the masked tokens (round(0.15 * (S - 3)) per sequence): the work the objective
                  needs (the masked-rows head gives the dense head's loss and gradients). MFU = model FLOP/s
                  over the device's dense bf16 peak (H100 SXM / H200: 989.4e12). Same numerator for both
                  sides, so the MFU ratio is the throughput ratio.
  executed FLOPs  what each side computes: ours = model FLOPs; HF runs the MLM decoder on every token, so its
                  executed FLOPs use mlm_rows = B*S (the dense formula); HFU = executed FLOP/s over the peak.
Memory: ours = the model's allocated() bytes (arenas + op scratch; they never shrink, so this is the peak),
HF = torch.cuda.max_memory_allocated(); both also report device used (total - free) after the run, which
adds the CUDA context (and, for HF, the caching allocator's reserve).

Order and budget (--budget-s): ours for every shape, then HF sdpa, HF sdpa + compile, HF eager (the shape
order within each); a variant is started only if the budget left covers its usual cost, and its timeout is
what is left; the rest are recorded as skipped. Prints a table (ours / best HF) and writes JSON.

    python3 bench/bench_train_gpu.py --bench build/bench/bench_train_step --json bench/results/train_gpu.json

The suite runs this driver without a GPU (tests/emulated/test_bench_train_gpu_driver.py): ours is
bench_train_step built on the emulated CUDA runtime, the HF side runs eager on torch's CPU (--hf-device cpu:
fp32, no autocast, fused AdamW, SDPA or compile there), shape tiny. That proves the plumbing, never the numbers.
"""
import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time

VOCAB = 30522
BASE = dict(hidden=768, layers=12, heads=12, intermediate=3072, vocab=VOCAB)
LARGE = dict(hidden=1024, layers=24, heads=16, intermediate=4096, vocab=VOCAB)
SHAPES = {
    "base-128": dict(BASE, seq=128, batch=128),
    "base-512": dict(BASE, seq=512, batch=32),
    "large-128": dict(LARGE, seq=128, batch=64),
    "large-512": dict(LARGE, seq=512, batch=16),
}
DEFAULT_SHAPES = list(SHAPES)
SHAPES["tiny"] = dict(hidden=64, layers=2, heads=2, intermediate=256, vocab=300, seq=32, batch=4)
VARIANTS = ["ours", "hf_sdpa", "hf_sdpa_compile", "hf_eager"]
# Seconds a variant usually needs (process start, imports, model init, compile, steps): one is started only
# when at least this much budget is left.
MIN_SECONDS = {"ours": 15, "hf_sdpa": 30, "hf_eager": 30, "hf_sdpa_compile": 90}

# Dense bf16 tensor-core peaks (NVIDIA datasheets), as engine/trainer.cpp and bench_train_step name them.
def bf16_dense_peak(name):
    if "H100" in name:
        return (756e12, "H100 PCIe dense bf16 (756 TFLOP/s)") if "PCIe" in name else \
               (989.4e12, "H100 SXM / H200 dense bf16 (989.4 TFLOP/s)")
    if "H200" in name:
        return 989.4e12, "H100 SXM / H200 dense bf16 (989.4 TFLOP/s)"
    if "A100" in name:
        return 312e12, "A100 dense bf16 (312 TFLOP/s)"
    return 0.0, "unknown device: no MFU"


# Projection: one epoch of a Korean-Wikipedia-sized corpus at BERT-base seq 128. Assumed: 1.0e9 token
# positions per epoch, a deliberately round UPPER estimate. Reasoning: kowiki's article text is roughly 1 GB of
# UTF-8 after cleaning; our Korean demo corpus packs into 0.27 positions of 128-token NSP examples per byte
# (runs/demo/shards/manifest.json: 9,657 examples x 128 from 4.58 MB with a 16k vocab; 0.19 real tokens per
# byte), which gives ~0.3e9 positions for 1 GB at dupe_factor 1. A larger dump, dupe_factor > 1 or a less
# compact tokenizer raises it; 1.0e9 keeps the projection conservative for us (time scales linearly: the
# hours per 1e9 tokens are printed too). Override with --corpus-tokens.
CORPUS_TOKENS = 1.0e9
SEED_NOTEBOOK_HOURS = 9.0  # the seed notebook's epoch (HF Trainer), as reported in the issue

from hf_bench_common import hf_decay_groups, make_batch, masked_per_sequence, training_flops, write_json  # noqa: E402


def model_mlm_rows(s):
    return s["batch"] * masked_per_sequence(s["seq"])


# ---- the HF side (its own process: `bench_train_gpu.py --hf-worker JSON`) ----------------------------------

def hf_worker(spec):
    import torch
    import transformers
    from transformers import BertConfig, BertForPreTraining

    s, variant = spec["shape"], spec["variant"]
    attn = "eager" if variant == "hf_eager" else "sdpa"
    compiled = variant == "hf_sdpa_compile"
    on_gpu = spec.get("device", "cuda") == "cuda"  # cpu: the suite's run of this driver (see the top)
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device("cuda" if on_gpu else "cpu")
    synchronize = torch.cuda.synchronize if on_gpu else (lambda: None)
    result = {"variant": variant, "torch": torch.__version__, "transformers": transformers.__version__,
              "cuda": torch.version.cuda,
              "device_name": torch.cuda.get_device_name(0) if on_gpu else f"cpu ({platform.machine()})",
              "attn_implementation_requested": attn, "compiled": compiled,
              "autocast": "bfloat16" if on_gpu else None}
    config = BertConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                        num_attention_heads=s["heads"], intermediate_size=s["intermediate"],
                        hidden_dropout_prob=spec["dropout"], attention_probs_dropout_prob=spec["dropout"],
                        max_position_embeddings=512)
    t_build = time.perf_counter()
    try:
        model = BertForPreTraining._from_config(config, attn_implementation=attn)
    except (TypeError, AttributeError):  # older/newer signatures: ask through the config instead
        config._attn_implementation = attn
        model = BertForPreTraining(config)
    result["attn_implementation"] = getattr(model.config, "_attn_implementation", attn)
    result["parameters"] = sum(p.numel() for p in model.parameters())
    model.to(device).train()

    groups = hf_decay_groups(torch, model)  # HF Trainer.create_optimizer
    optimizer = torch.optim.AdamW(groups, lr=1e-4, eps=1e-8, weight_decay=0.01, **({"fused": True} if on_gpu else {}))
    result["fused_adamw"] = on_gpu
    forward = torch.compile(model) if compiled else model

    batch = {k: v.to(device) for k, v in make_batch(torch, s).items()}
    synchronize()
    result["build_s"] = round(time.perf_counter() - t_build, 3)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()

    times, losses = [], []
    first_step_s = None
    for step in range(spec["warmup"] + spec["steps"]):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
            out = forward(**batch)
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        synchronize()
        dt = time.perf_counter() - t0
        if first_step_s is None:
            first_step_s = dt
        losses.append(float(out.loss.detach()))
        if step >= spec["warmup"]:
            times.append(dt)
    step_s = statistics.median(times)
    free, total = torch.cuda.mem_get_info() if on_gpu else (None, None)
    B, S = s["batch"], s["seq"]
    model_flops = training_flops(s, model_mlm_rows(s))
    executed_flops = training_flops(s, B * S)  # HF runs the MLM decoder on every token
    result.update(step_ms=[round(1e3 * t, 3) for t in times], median_step_ms=1e3 * step_s,
                  first_step_s=round(first_step_s, 3), tokens_per_s=B * S / step_s, sequences_per_s=B / step_s,
                  num_masked=int((batch["labels"] != -100).sum()), model_flops_per_step=model_flops,
                  executed_flops_per_step=executed_flops, model_flops_per_s=model_flops / step_s,
                  executed_flops_per_s=executed_flops / step_s,
                  peak_allocated_bytes=torch.cuda.max_memory_allocated() if on_gpu else None,
                  peak_reserved_bytes=torch.cuda.max_memory_reserved() if on_gpu else None,
                  device_used_bytes=total - free if on_gpu else None, device_total_bytes=total,
                  first_loss=losses[0], last_loss=losses[-1], last_grad_norm=float(norm))
    return result


# ---- the driver -----------------------------------------------------------------------------------------------

def run_job(cmd, timeout, env):
    """Runs cmd in its own process group; returns (parsed last JSON line | None, error | None, wall, stderr tail)."""
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    except OSError as e:  # a missing or non-executable binary: that variant's error, not the run's end
        return None, f"cannot start {cmd[0]}: {e.strerror or e}", time.perf_counter() - t0, ""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the child and anything it started (inductor compile workers)
        except ProcessLookupError:
            pass
        out, err = p.communicate()
        return None, f"timeout after {timeout:.0f} s", time.perf_counter() - t0, (err or "")[-1500:]
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        lines = [l for l in (err or out or "").strip().splitlines() if l.strip()]
        return None, f"exit {p.returncode}: {lines[-1][:300] if lines else ''}", wall, (err or "")[-1500:]
    try:
        return json.loads(out.strip().splitlines()[-1]), None, wall, (err or "")[-300:]
    except (ValueError, IndexError) as e:
        return None, f"unreadable output: {e}", wall, (out or "")[-1500:]


def nvidia_smi():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e:  # noqa: BLE001 - informational only
        return f"nvidia-smi failed: {e}"


def fmt_tps(r):
    if r is None:
        return "-"
    if "error" in r:
        return r["error"].split(":")[0][:24]
    return f"{r['tokens_per_s']:,.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf-worker", help=argparse.SUPPRESS)
    ap.add_argument("--bench", default="build/bench/bench_train_step", help="bench_train_step binary (CUDA build)")
    ap.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help="comma-separated: " + ",".join(SHAPES))
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--budget-s", type=float, default=1800, help="seconds for all variants together")
    ap.add_argument("--timeout", type=float, default=240, help="per variant, seconds (at most the budget left)")
    ap.add_argument("--corpus-tokens", type=float, default=CORPUS_TOKENS,
                    help="token positions per epoch for the projection (see CORPUS_TOKENS)")
    ap.add_argument("--json", default="bench/results/train_gpu.json", help="output JSON ('' = none)")
    ap.add_argument("--hf-device", choices=["cuda", "cpu"], default="cuda",
                    help="where the HF variants run; cpu only for the suite's run of this driver (see the top)")
    args = ap.parse_args()

    if args.hf_worker:
        print(json.dumps(hf_worker(json.loads(args.hf_worker))), flush=True)
        return

    started = time.time()
    deadline = time.monotonic() + args.budget_s
    bench = os.path.abspath(args.bench)
    shapes = [n for n in args.shapes.split(",") if n]
    variants = [v for v in args.variants.split(",") if v]
    for n in shapes:
        if n not in SHAPES:
            sys.exit(f"bench_train_gpu: unknown shape {n!r} (known: {', '.join(SHAPES)})")
    for v in variants:
        if v not in VARIANTS:
            sys.exit(f"bench_train_gpu: unknown variant {v!r} (known: {', '.join(VARIANTS)})")
    env = dict(os.environ, USE_TF="0", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
               PYTHONUNBUFFERED="1")

    record = {
        "benchmark": "GPU training throughput: bertforge bench_train_step --device cuda vs HF BertForPreTraining "
                     "(bf16 autocast, fused AdamW) on the same GPU, same run",
        "command": shlex.join([sys.executable] + sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "nvidia_smi": nvidia_smi(),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "steps": args.steps, "warmup": args.warmup, "dropout": args.dropout, "budget_s": args.budget_s,
        "hf_device": args.hf_device,
        "flops_note": "model FLOPs: bert_training_flops with mlm_rows = masked tokens (both sides; MFU); "
                      "executed FLOPs: HF's with mlm_rows = all tokens (dense MLM decoder; HFU)",
        "shapes": {n: {"shape": SHAPES[n]} for n in shapes},
    }
    print(f"bench_train_gpu: {record['nvidia_smi']}; budget {args.budget_s:.0f} s; "
          f"{args.warmup} warm-up + {args.steps} timed steps", flush=True)

    jobs = [(v, n) for v in variants for n in shapes]  # ours for every shape first, then each HF variant
    for variant, name in jobs:
        s = SHAPES[name]
        left = deadline - time.monotonic()
        if left < MIN_SECONDS[variant]:
            record["shapes"][name][variant] = {"error": f"skipped: budget ({left:.0f} s left)"}
            print(f"[{name}] {variant} skipped ({left:.0f} s of budget left)", flush=True)
            continue
        timeout = min(args.timeout * (2 if variant == "hf_sdpa_compile" else 1), left)
        if variant == "ours":
            cmd = [bench] + [f"--{k}={v}" for k, v in s.items()] + [
                f"--steps={args.steps}", f"--warmup={args.warmup}", f"--dropout={args.dropout}", "--device=cuda",
                "--json"]
        else:
            spec = dict(shape=s, variant=variant, steps=args.steps, warmup=args.warmup, dropout=args.dropout,
                        device=args.hf_device)
            cmd = [sys.executable, os.path.abspath(__file__), "--hf-worker", json.dumps(spec)]
        print(f"[{name}] {variant} (timeout {timeout:.0f} s) ...", end=" ", flush=True)
        result, error, wall, tail = run_job(cmd, timeout, env)
        if error:
            result = {"error": error, "stderr_tail": tail}
            print(f"FAILED: {error}", flush=True)
        else:
            if variant == "ours":  # the same names as the HF side
                result["model_flops_per_step"] = result["flops_per_step"]
                result["executed_flops_per_step"] = result["flops_per_step"]
                result["model_flops_per_s"] = result["executed_flops_per_s"] = result["flops_per_s"]
                result["peak_allocated_bytes"] = result["allocated_bytes"]
            print(f"{result['tokens_per_s']:,.0f} tokens/s, {result['median_step_ms']:.2f} ms/step", flush=True)
        result["process_wall_s"] = round(wall, 2)
        result["command"] = shlex.join(cmd) if variant == "ours" else f"{sys.executable} {__file__} --hf-worker ..."
        record["shapes"][name][variant] = result

    # Summary per shape: MFU against the device's peak, ours / best HF.
    device_name = next((r.get("device_name") for e in record["shapes"].values() for v, r in e.items()
                        if isinstance(r, dict) and r.get("device_name")), "")
    peak, peak_name = bf16_dense_peak(device_name)
    record["device"] = {"name": device_name, "peak_flops_per_s": peak or None, "peak_name": peak_name}
    versions = next((r for e in record["shapes"].values() for v, r in e.items()
                     if v.startswith("hf_") and isinstance(r, dict) and "torch" in r), {})
    record["versions"] = {"python": platform.python_version(), "torch": versions.get("torch"),
                          "transformers": versions.get("transformers"), "cuda": versions.get("cuda")}
    rows = []
    for name in shapes:
        e = record["shapes"][name]
        s = SHAPES[name]
        ours = e.get("ours")
        ours_ok = ours if ours and "error" not in ours else None
        hf_ok = {v: e[v] for v in VARIANTS[1:] if v in e and "error" not in e[v]}
        best_v = max(hf_ok, key=lambda v: hf_ok[v]["tokens_per_s"]) if hf_ok else None
        best = hf_ok.get(best_v) if best_v else None
        summary = {"model_flops_per_step": training_flops(s, model_mlm_rows(s)),
                   "hf_executed_flops_per_step": training_flops(s, s["batch"] * s["seq"]),
                   "best_hf_variant": best_v}
        for tag, r in (("ours", ours_ok), ("best_hf", best)):
            if r:
                summary[f"{tag}_tokens_per_s"] = r["tokens_per_s"]
                summary[f"{tag}_sequences_per_s"] = r["sequences_per_s"]
                summary[f"{tag}_model_tflops"] = r["model_flops_per_s"] / 1e12
                summary[f"{tag}_mfu"] = r["model_flops_per_s"] / peak if peak else None
                summary[f"{tag}_hfu"] = r["executed_flops_per_s"] / peak if peak else None
                if r.get("peak_allocated_bytes") is not None:
                    summary[f"{tag}_peak_allocated_gib"] = r["peak_allocated_bytes"] / 2**30
        if ours_ok and best:
            summary["ours_over_best_hf"] = ours_ok["tokens_per_s"] / best["tokens_per_s"]
        e["summary"] = summary
        rows.append((name, s, e, summary))

    print()
    print(f"device: {device_name or '?'}; MFU against {peak_name}; model FLOPs = bert_training_flops with the "
          f"masked rows (HF's HFU counts its dense MLM decoder)")
    print("| shape | batch | ours tok/s | HF sdpa | HF sdpa+compile | HF eager | ours / best HF "
          "| MFU ours / best HF | HFU best HF | peak alloc GiB ours / best HF |")
    print("|" + "---|" * 10)

    def pct(x):
        return f"{100 * x:.1f}%" if x is not None else "-"

    for name, s, e, m in rows:
        ratio = f"{m['ours_over_best_hf']:.2f}x ({m['best_hf_variant']})" if "ours_over_best_hf" in m else "-"
        mem = (f"{m['ours_peak_allocated_gib']:.1f}" if "ours_peak_allocated_gib" in m else "-") + " / " + \
              (f"{m['best_hf_peak_allocated_gib']:.1f}" if "best_hf_peak_allocated_gib" in m else "-")
        print(f"| {name} | {s['batch']} | {fmt_tps(e.get('ours'))} | {fmt_tps(e.get('hf_sdpa'))} "
              f"| {fmt_tps(e.get('hf_sdpa_compile'))} | {fmt_tps(e.get('hf_eager'))} | {ratio} "
              f"| {pct(m.get('ours_mfu'))} / {pct(m.get('best_hf_mfu'))} | {pct(m.get('best_hf_hfu'))} | {mem} |")
    for name, s, e, m in rows:
        for v in VARIANTS:
            r = e.get(v)
            if r and "error" in r:
                print(f"[{name}] {v}: {r['error']}")

    # Projection: one epoch of a Korean-Wikipedia-sized corpus at BERT-base seq 128 (see CORPUS_TOKENS).
    base = record["shapes"].get("base-128", {}).get("summary", {})
    projection = {"corpus_tokens": args.corpus_tokens, "shape": "base-128",
                  "seed_notebook_hours": SEED_NOTEBOOK_HOURS}
    if "ours_tokens_per_s" in base:
        projection["ours_hours"] = args.corpus_tokens / base["ours_tokens_per_s"] / 3600
        projection["ours_hours_per_1e9_tokens"] = 1e9 / base["ours_tokens_per_s"] / 3600
    if "best_hf_tokens_per_s" in base:
        projection["best_hf_hours"] = args.corpus_tokens / base["best_hf_tokens_per_s"] / 3600
    record["projection"] = projection
    if "ours_hours" in projection:
        hf_part = (f", best HF here {projection['best_hf_hours']:.2f} h" if "best_hf_hours" in projection else "")
        print(f"\nprojection: one epoch of {args.corpus_tokens:.2g} tokens (Korean-Wikipedia-sized, assumed) at "
              f"BERT-base seq 128: ours {projection['ours_hours']:.2f} h "
              f"({projection['ours_hours_per_1e9_tokens']:.2f} h per 1e9 tokens){hf_part}; "
              f"seed notebook ~{SEED_NOTEBOOK_HOURS:.0f} h")
    else:
        print("\nprojection: no base-128 result of ours")

    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record["wall_s"] = round(time.time() - started, 1)
    print(f"total {record['wall_s']} s")
    if args.json:
        write_json(record, args.json)
    # Exit status 0: ours ran on every shape (when asked) and at least one HF variant ran (when any was asked).
    ours_ok = "ours" not in variants or all("error" not in e["ours"] for e in record["shapes"].values())
    hf_asked = [v for v in variants if v != "ours"]
    hf_ok = not hf_asked or any("error" not in e[v] for e in record["shapes"].values() for v in hf_asked)
    sys.exit(0 if ours_ok and hf_ok else 1)


if __name__ == "__main__":
    main()
