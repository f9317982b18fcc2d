#!/usr/bin/env python3
"""bench/bench_train_gpu.py, the GPU training benchmark's driver, run without a GPU: ours is
bench_train_step --device cuda built on the emulated CUDA runtime (bench_train_step_emulated), the HF side
runs eager in fp32 on torch's CPU (--hf-device cpu), shape tiny. What a GPU run would otherwise be the first to
find: the binary's JSON, the driver's parsing of it, the HF worker, the summary, table and exit status.

Checked:
  - ours and HF both run; the record has their throughput, losses and step times, and the summary the
    ratio, the best HF variant and MFU against the (emulated) H200's peak
  - the FLOPs: the C++ bench_training_flops of ours equals the driver's Python port for the same shape
    and the HF side's masked-row count, so MFU is formed alike on both sides
  - the table row and the error lines; the JSON written where --json says
  - failures are recorded, not fatal, and set the exit status: a missing binary, an unknown shape
  - bench_train_step --profile: every op of the graph timed, with the calls the graph makes per layer
  - bench_train_step --gemm-autotune: the setting and the GEMM plans in the JSON (none here: the
    emulated ops have no cuBLASLt), the plans' heading in the text; on the CPU, or with no warm-up
    step to tune in, a one-line error
  - bench_train_step --kernel-paths: the setting in the JSON and the text; on the CPU, or an unknown value,
    a one-line error
  - bench_train_step --decoder-chunk-rows: the model's default (4,096 on CUDA) or N in the JSON and the
    text, the MLM cross-entropy called once per chunk, on both devices; a negative value, a one-line error
The numbers themselves mean nothing here (an emulation, torch's CPU).

    test_bench_train_gpu_driver.py --bench build/tests/bench_train_step_emulated --work DIR
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "bench", "bench_train_gpu.py")

failures = []


def check(condition, what):
    print(("ok      " if condition else "FAILED  ") + what, flush=True)
    if not condition:
        failures.append(what)


def run_driver(work, name, *args):
    out = os.path.join(work, name + ".json")
    cmd = [sys.executable, DRIVER, "--json", out, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    print(f"--- {name}: exit {p.returncode}\n{p.stdout}{p.stderr}", flush=True)
    record = None
    if os.path.exists(out):
        with open(out) as f:
            record = json.load(f)
    return p, record


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True, help="bench_train_step_emulated")
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from hf_bench_common import masked_per_sequence, training_flops

    # Ours and HF eager on the tiny shape.
    p, record = run_driver(args.work, "both", "--bench", args.bench, "--shapes", "tiny", "--variants",
                           "ours,hf_eager", "--hf-device", "cpu", "--steps", "2", "--warmup", "1",
                           "--budget-s", "500")
    check(p.returncode == 0, "ours + hf_eager: exit status 0")
    check(record is not None, "the JSON is written where --json says")
    if record is None:
        sys.exit("FAILED: no record to check")
    check(record.get("hf_device") == "cpu", "the record names the HF side's device")
    shape = record["shapes"]["tiny"]["shape"]
    ours = record["shapes"]["tiny"].get("ours", {})
    hf = record["shapes"]["tiny"].get("hf_eager", {})
    summary = record["shapes"]["tiny"].get("summary", {})
    check("error" not in ours and "error" not in hf, "neither variant failed: " + str(ours.get("error")) + ", " +
          str(hf.get("error")))
    check("emulation" in ours.get("device_name", ""), "ours ran on the emulated device")
    check(hf.get("device_name", "").startswith("cpu") and hf.get("fused_adamw") is False and
          hf.get("autocast") is None, "the HF side ran on torch's CPU in fp32 without fused AdamW")
    for side, r in (("ours", ours), ("hf_eager", hf)):
        check(r.get("tokens_per_s", 0) > 0 and r.get("sequences_per_s", 0) > 0, side + ": throughput")
        check(len(r.get("step_ms", [])) == 2 and r.get("median_step_ms", 0) > 0, side + ": two timed steps")
        check(all(math.isfinite(r.get(k, math.nan)) and r[k] > 0 for k in ("first_loss", "last_loss")),
              side + ": finite losses")
        check(math.isclose(r.get("tokens_per_s", 0), shape["batch"] * shape["seq"] / (r.get("median_step_ms", 1) / 1e3),
                            rel_tol=1e-3), side + ": tokens/s = batch x seq / median step")
    # The same FLOP formula on both sides: the C++ count of ours, the Python port, the HF side's.
    masked = shape["batch"] * masked_per_sequence(shape["seq"])
    expected = training_flops(shape, masked)
    check(ours.get("num_masked") == masked and hf.get("num_masked") == masked,
          f"both sides label {masked} positions")
    check(math.isclose(ours.get("model_flops_per_step", 0), expected, rel_tol=1e-6),
          f"ours' FLOPs (engine/bert.h) {ours.get('model_flops_per_step')} = the Python port's {expected}")
    check(math.isclose(hf.get("model_flops_per_step", 0), expected, rel_tol=1e-12) and
          math.isclose(hf.get("executed_flops_per_step", 0), training_flops(shape, shape["batch"] * shape["seq"]),
                       rel_tol=1e-12), "HF's model and executed FLOPs")
    check(summary.get("best_hf_variant") == "hf_eager", "the summary's best HF variant")
    check(math.isclose(summary.get("ours_over_best_hf", 0), ours["tokens_per_s"] / hf["tokens_per_s"], rel_tol=1e-9),
          "the summary's ratio ours / best HF")
    check(record["device"]["peak_flops_per_s"] == 989.4e12 and
          math.isclose(summary.get("ours_mfu", 0), ours["model_flops_per_s"] / 989.4e12, rel_tol=1e-9),
          "MFU against the (emulated) H200's dense bf16 peak")
    check("ours_peak_allocated_gib" in summary and "best_hf_peak_allocated_gib" not in summary,
          "peak memory: ours' arenas; none for torch's CPU")
    check("| tiny | 4 |" in p.stdout and "x (hf_eager)" in p.stdout, "the table's row")
    check("projection: no base-128 result of ours" in p.stdout, "no projection without base-128")

    # A missing binary: recorded as ours' error, the run goes on, the exit status says so.
    p, record = run_driver(args.work, "missing", "--bench", os.path.join(args.work, "no_such_bench"), "--shapes",
                           "tiny", "--variants", "ours", "--budget-s", "60")
    check(p.returncode == 1, "a missing bench_train_step: exit status 1")
    error = (record or {}).get("shapes", {}).get("tiny", {}).get("ours", {}).get("error", "")
    check(error != "", "its error is in the record: " + error)
    check("[tiny] ours: " in p.stdout, "and in the error lines under the table")

    p, record = run_driver(args.work, "unknown", "--bench", args.bench, "--shapes", "base-1024")
    check(p.returncode != 0 and "unknown shape 'base-1024'" in p.stderr and record is None,
          "an unknown shape: a one-line error, nothing run or written")

    # --profile: one more forward+backward with every op timed (bench_train_step's header).
    layers = 3
    cmd = [args.bench, "--device", "cuda", "--hidden", "64", "--layers", str(layers), "--heads", "2", "--intermediate",
           "128", "--vocab", "300", "--seq", "32", "--batch", "2", "--steps", "1", "--warmup", "0", "--profile", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    check(p.returncode == 0, f"bench_train_step --profile: exit status 0 ({p.stderr.strip()[-200:]})")
    profiled = json.loads(p.stdout) if p.returncode == 0 else {}
    calls = {entry["op"]: entry["calls"] for entry in profiled.get("profile", [])}
    # Dropout is on: the hidden dropout runs fused into the residual LayerNorms (forward and backward),
    # dropout_forward and dropout_backward only at the embeddings.
    per_layer = {"attention_forward": 1, "attention_backward": 1, "dropout_residual_layernorm_forward": 2,
                 "residual_layernorm_dropout_backward": 2, "linear_forward 64x64x192": 1, "linear_backward 64x64x192": 1,
                 "linear_forward 64x64x128": 1, "linear_forward 64x128x64": 1, "bias_gelu_forward 128": 1}
    check(all(calls.get(op) == n * layers for op, n in per_layer.items()),
          "--profile: the per-layer ops, each called once per layer per use: " +
          str({op: calls.get(op) for op in per_layer}))
    unfused = ("residual_layernorm_forward", "residual_layernorm_backward", "dropout_forward", "dropout_backward")
    check(all(op not in calls for op in unfused[:2]) and calls.get("dropout_forward") == 1 and
          calls.get("dropout_backward") == 1,
          "--profile: no unfused residual LayerNorm; dropout_forward and dropout_backward once (the embeddings): " +
          str({op: calls.get(op) for op in unfused}))
    check(calls.get("embeddings_layernorm_forward") == 1 and calls.get("softmax_cross_entropy 2") == 1 and
          calls.get("softmax_cross_entropy 300") == 1 and calls.get("scatter_add_rows") == 1,
          "--profile: the embeddings, both losses and the MLM rows' scatter, once each")
    ops_ms, fb_ms = profiled.get("profile_ops_ms", -1), profiled.get("profile_forward_backward_ms", -1)
    check(0 < ops_ms <= fb_ms * 1.001 + 1e-3 and
          math.isclose(ops_ms, sum(entry["ms"] for entry in profiled.get("profile", [])), rel_tol=1e-3, abs_tol=1e-3),
          f"--profile: the ops' {ops_ms} ms sum to their total, within the forward+backward's {fb_ms} ms")
    # 16 ops a layer and 21 more (bench/RESULTS.md's count of a BERT-base step: 213).
    check(profiled.get("profile_op_calls") == sum(calls.values()) == 16 * layers + 21,
          f"--profile: the ops issued, {profiled.get('profile_op_calls')}, are the calls summed, "
          f"{sum(calls.values())}, 16 a layer and 21 more")
    issue_ms, step_ms = profiled.get("median_host_issue_ms", -1), profiled.get("median_step_ms", -1)
    # The emulated ops run when the host waits, so queueing a step takes a small part of it; an issue
    # time taken after the wait would not.
    check(0 < issue_ms and issue_ms * 10 < step_ms,
          f"the host's time to queue a step, {issue_ms} ms, a small part of the step's {step_ms} ms")
    text = subprocess.run(cmd[:-1], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=300).stdout
    check("by op (CUDA events around each)" in text and "between ops (launch gaps, host work)" in text,
          "--profile: the text table")
    check(re.search(r"^  sum of the ops +%d " % sum(calls.values()), text, re.M) is not None,
          "--profile: the text table's op count")
    check(re.search(r"^host +[0-9.]+ ms median to queue a step .*, [0-9]+% of the device's [0-9.]+ ms$", text, re.M)
          is not None, "the text's host line")
    p = subprocess.run([args.bench, "--device", "cpu", "--profile"], capture_output=True, text=True, timeout=60)
    check(p.returncode != 0 and "--profile needs --device cuda" in p.stderr, "--profile on the CPU: a one-line error")

    # --gemm-autotune (bench_train_step's header): reported in the JSON and the text, refused where it means nothing.
    check(profiled.get("gemm_autotune") == 0 and profiled.get("gemm_plans") == [],
          f"JSON: gemm_autotune 0 and the GEMM plans (none on the emulated ops) ({profiled.get('gemm_plans')})")
    tuned = [arg for arg in cmd if arg not in ("--profile", "--json")]
    tuned[tuned.index("--warmup") + 1] = "1"
    p = subprocess.run(tuned + ["--gemm-autotune", "4"], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    check(p.returncode == 0 and "gemm plans 0 (cuBLASLt, m x n x k column-major; autotuned" in p.stdout,
          f"--gemm-autotune 4: exit 0, the plans' heading says autotuned ({p.stderr.strip()[-200:]})")
    no_warmup = tuned[1:]
    no_warmup[no_warmup.index("--warmup") + 1] = "0"
    for extra, needle in ((["--device", "cpu", "--gemm-autotune", "4"], "--gemm-autotune needs --device cuda"),
                          (no_warmup + ["--gemm-autotune", "4"], "--gemm-autotune needs --warmup 1"),
                          (["--device", "cuda", "--gemm-autotune", "33"], "'--gemm-autotune' must be between 0 and 32")):
        p = subprocess.run([args.bench] + extra, capture_output=True, text=True, timeout=60)
        check(p.returncode != 0 and needle in p.stderr, f"{' '.join(extra[-4:])}: a one-line error naming '{needle}'")

    # --kernel-paths (bench_train_step's header): reported in the JSON and the text, refused on the CPU and for
    # an unknown value or field.
    check(profiled.get("kernel_paths") == "default", f"JSON: kernel_paths default ({profiled.get('kernel_paths')})")
    p = subprocess.run(tuned + ["--kernel-paths", "baseline"], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    check(p.returncode == 0 and "kernels    baseline paths" in p.stdout,
          f"--kernel-paths baseline: exit 0, the text names the paths ({p.stderr.strip()[-200:]})")
    # One field off (describe()'s format read back), as the JSON reports it.
    one = "gelu_fast_math=false,dropout_fused_layernorm_backward=false"
    p = subprocess.run(tuned + ["--kernel-paths", one, "--json"], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    reported = json.loads(p.stdout).get("kernel_paths") if p.returncode == 0 else None
    check(reported == "dropout_fused_layernorm_backward=false,gelu_fast_math=false",
          f"--kernel-paths {one}: exit 0, the JSON names those fields ({reported}; {p.stderr.strip()[-200:]})")
    for extra, needle in ((["--device", "cpu", "--kernel-paths", "baseline"], "--kernel-paths needs --device cuda"),
                          (["--device", "cuda", "--kernel-paths", "fast"],
                           "--kernel-paths: KernelPaths: 'fast' is not <field>=true|false"),
                          (["--device", "cuda", "--kernel-paths", "gelu_fast_math=no"],
                           "'gelu_fast_math=no' is not <field>=true|false")):
        p = subprocess.run([args.bench] + extra, capture_output=True, text=True, timeout=60)
        check(p.returncode != 0 and needle in p.stderr, f"{' '.join(extra[-4:])}: a one-line error naming '{needle}'")

    # --decoder-chunk-rows (bench_train_step's header): 0 is the model's default (4,096 on CUDA: one chunk
    # here), N runs the MLM decoder and its cross-entropy once per N rows; reported in the JSON and the text.
    rows = profiled.get("mlm_rows", 0)
    check(profiled.get("decoder_chunk_rows") == 4096 and 2 < rows <= 4096,
          f"JSON: decoder_chunk_rows 4096 by default ({profiled.get('decoder_chunk_rows')}), {rows} MLM rows")
    p = subprocess.run(cmd + ["--decoder-chunk-rows", "2"], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    chunked = json.loads(p.stdout) if p.returncode == 0 else {}
    chunk_calls = {entry["op"]: entry["calls"] for entry in chunked.get("profile", [])}
    check(chunked.get("decoder_chunk_rows") == 2 and chunk_calls.get("softmax_cross_entropy 300") == (rows + 1) // 2,
          f"--decoder-chunk-rows 2: the JSON says 2, the MLM cross-entropy ran once per 2 of {rows} rows "
          f"({chunk_calls.get('softmax_cross_entropy 300')}; {p.stderr.strip()[-200:]})")
    p = subprocess.run([args.bench, "--device", "cpu", "--steps", "1", "--warmup", "0", "--no-sgemm", "--layers",
                        "1", "--batch", "2", "--seq", "16", "--decoder-chunk-rows", "3"],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    check(p.returncode == 0 and "masked tokens (" in p.stdout and "chunks of 3)" in p.stdout,
          f"--decoder-chunk-rows 3 on the CPU: the text says so ({p.stderr.strip()[-200:]})")
    p = subprocess.run([args.bench, "--device", "cuda", "--decoder-chunk-rows", "-1"], capture_output=True, text=True,
                       timeout=60)
    check(p.returncode != 0 and "--decoder-chunk-rows" in p.stderr, "--decoder-chunk-rows -1: a one-line error")

    if failures:
        sys.exit(f"{len(failures)} check(s) failed: " + "; ".join(failures))
    print("all checks passed")


if __name__ == "__main__":
    main()
