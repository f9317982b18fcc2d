#!/usr/bin/env python3
"""bench_kernels and bench_attention_torch.py's side-by-side, run without a GPU: bench_kernels.cu
compiled on the host emulation of the kernels (bench_kernels_emulated, tests/kernel_emu/README.md) runs
every case with --smoke (512 tokens per batch, one repeat), and bench_attention_torch.py prints its JSON
beside a reference read with --reference. What the one device run of scripts/gpu_check.sh would
otherwise be the first to find: a case whose output buffer is too small for its op (the emulated
cudaMalloc's guard bands catch the write past its end), a launch the device would refuse, a case that
throws, the JSON's fields, the lines gpu_check.sh greps, and the side-by-side's pairing of names.

Checked:
  - scripts/gpu_check.sh's KERNEL_PATH_FIELDS list KernelPaths::fields() (kernels/cuda/ops_cuda.h)
  - --help, --list (162 cases, unique names, both models, every op family, every attention kernel; each
    "_baseline" case right after its twin, with the same bytes in the JSON)
  - bad arguments and no device: exit status 1 and one line naming the problem
  - --smoke --json: exit 0, every case "ok" with finite outputs, the JSON's fields and the table's
    lines as gpu_check.sh reads them, and the FLOPs: linear 2 (4) * rows * in * out (the backward's
    dx and dW parts 2 each, db none), attention the formula of bench_attention_torch.py (the
    side-by-side compares TFLOP/s of the two); the GEMM plans and the attention kernels' resources,
    printed and in the JSON
  - --gemm-autotune: every plan the cases made timed the emulation's three algorithms (the refusing
    third one null), the chosen one the fastest, its rank printed; 33 rejected
  - bench_attention_torch.py --reference REF --ours JSON: a row for each plain attention case and
    its mma.sync twins (the backward's two at s128, the forward's two), the ratio best torch time /
    ours where both measured the same shape (none, and a line saying why, where they did not); exit 1 when flash
    failed; bad --reference and --reference with --json rejected
  - bench/compare_kernels.py on that JSON and a copy with one case twice as fast and one case dropped:
    2.00x for it, 1.00x for every other, the dropped case named, the padded MLM decoder beside the
    dense one of the same run, and files of different devices refused
The times themselves mean nothing here (an emulation).

    test_bench_kernels_smoke.py --bench build/tests/bench_kernels_emulated --work DIR
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
TORCH_BENCH = os.path.join(ROOT, "bench", "bench_attention_torch.py")
COMPARE = os.path.join(ROOT, "bench", "compare_kernels.py")
MODELS = {"bert-base": (768, 12, 3072, 30522), "bert-large": (1024, 16, 4096, 30522)}
FAMILIES = ["linear_fwd", "linear_bwd", "linear_bwd_dx", "linear_bwd_dw", "linear_bwd_db", "layernorm_fwd", "layernorm_bwd", "residual_layernorm_fwd",
            "dropout_residual_layernorm_fwd", "residual_layernorm_dropout_bwd", "residual_layernorm_bwd",
            "bias_gelu_fwd", "bias_gelu_bwd",
            "embeddings_fwd", "embeddings_bwd", "dropout_fwd", "dropout_bwd", "attention_fwd", "attention_fwd_mma",
            "attention_bwd", "attention_bwd_mma", "attention_train_fwd", "attention_train_fwd_mma",
            "attention_train_bwd", "attention_train_bwd_mma", "attention_bwd_mma_recompute_dq",
            "attention_train_bwd_mma_recompute_dq", "cross_entropy", "adamw", "grad_norm"]
# The cases with a KernelPaths::baseline() twin (bench_kernels.cu: with_baseline_cases).
BASELINED = ["linear_bwd", "layernorm_fwd", "residual_layernorm_fwd", "layernorm_bwd", "residual_layernorm_bwd",
             "dropout_residual_layernorm_fwd", "residual_layernorm_dropout_bwd", "bias_gelu_fwd", "bias_gelu_bwd",
             "cross_entropy", "embeddings_fwd", "embeddings_bwd", "attention_fwd_mma", "attention_train_fwd_mma"]
FAMILIES += [family + "_baseline" for family in BASELINED]

failures = []


def check(condition, what):
    print(("ok      " if condition else "FAILED  ") + what, flush=True)
    if not condition:
        failures.append(what)


def run(cmd, env=None, timeout=120):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))
    return p


def check_rejected(bench, args, needle, env=None):
    p = run([bench, *args], env)
    lines = [line for line in p.stderr.splitlines() if line.startswith("bench_kernels:")]
    check(p.returncode == 1 and len(lines) == 1 and needle in lines[0],
          f"{' '.join(args) or '(no args)'}{' with ' + str(env) if env else ''}: exit 1 with one line naming "
          f"'{needle}' (exit {p.returncode}, {lines})")


def relative(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True, help="bench_kernels_emulated")
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from bench_attention_torch import attention_flops

    # ---- gpu_check.sh's "fields" stage names every KernelPaths field, and only those ----------------
    with open(os.path.join(ROOT, "kernels", "cuda", "ops_cuda.h")) as f:
        declared = re.findall(r'\{"([a-z_]+)", &KernelPaths::\1\}', f.read())
    with open(os.path.join(ROOT, "scripts", "gpu_check.sh")) as f:
        listed = re.search(r'^KERNEL_PATH_FIELDS="([^"]*)"', f.read(), re.M)
    check(len(declared) >= 8 and listed is not None and sorted(listed.group(1).split()) == sorted(declared),
          f"gpu_check.sh's KERNEL_PATH_FIELDS are KernelPaths::fields() ({declared} vs "
          f"{listed.group(1).split() if listed else None})")

    # ---- help and list -------------------------------------------------------------------------------
    p = run([args.bench, "--help"])
    check(p.returncode == 0 and "--smoke" in p.stdout and "--tokens" in p.stdout,
          "--help: exit 0, names --smoke and --tokens")
    p = run([args.bench, "--list"])
    names = [line.split()[0] for line in p.stdout.splitlines() if line.strip()]
    check(p.returncode == 0 and len(names) == 162, f"--list: exit 0, 162 cases (exit {p.returncode}, {len(names)})")
    check(len(set(names)) == len(names), "--list: names are unique")
    twins = [(names[i - 1], name) for i, name in enumerate(names) if "_baseline/" in name]
    check(len(twins) == 44 and all(i > 0 and before == name.replace("_baseline/", "/", 1) for before, name in twins
                                   for i in [names.index(name)]),
          f"--list: 44 '_baseline' cases, each right after its twin ({[t for t in twins if t[0] != t[1].replace('_baseline/', '/', 1)]})")
    for model in MODELS:
        families = {name.split("/")[0] for name in names if name.split("/")[1] == model}
        check(families == set(FAMILIES), f"--list: {model} has every op family ({sorted(set(FAMILIES) ^ families)})")
    full_shapes = p.stdout
    p = run([args.bench, "--smoke", "--list"])
    check(p.returncode == 0 and "rows 512, cols 768" in p.stdout and "rows 16384, cols 768" in full_shapes,
          "--smoke --list: 512 tokens per batch (16384 without)")
    check("30 tensors" in p.stdout and "206 tensors" in full_shapes and "398 tensors" in full_shapes,
          "--smoke --list: one encoder layer in the optimizer cases (12 / 24 without)")

    # ---- rejected ------------------------------------------------------------------------------------
    check_rejected(args.bench, ["--tokens", "1000"], "--tokens needs a multiple of 512")
    check_rejected(args.bench, ["--tokens", "256"], "--tokens needs a multiple of 512")
    check_rejected(args.bench, ["--repeats", "0"], "--repeats needs an integer in 1..100000")
    check_rejected(args.bench, ["--repeats", "3x"], "--repeats needs an integer in 1..100000")
    check_rejected(args.bench, ["--filter", "no_such_op"], "no case matches --filter 'no_such_op'")
    check_rejected(args.bench, ["--bogus"], "unknown argument '--bogus'")
    check_rejected(args.bench, ["--json"], "--json needs a value")
    check_rejected(args.bench, ["--gemm-autotune", "33"], "--gemm-autotune needs an integer in 0..32")
    check_rejected(args.bench, ["--smoke"], "no CUDA device", env={"BERT_EMULATED_DEVICE_COUNT": "0"})
    check_rejected(args.bench, ["--smoke"], "CUDA device 0 (sm_80) cannot run this build's kernels",
                   env={"BERT_EMULATED_DEVICE_SM": "80"})

    # ---- every case, small -----------------------------------------------------------------------------
    ours_path = os.path.join(args.work, "bench_kernels.json")
    p = run([args.bench, "--smoke", "--json", ours_path], timeout=800)
    print(p.stdout + p.stderr, flush=True)
    check(p.returncode == 0, f"--smoke: exit 0 (exit {p.returncode})")
    lines = p.stdout.splitlines()
    # What scripts/gpu_check.sh reads from the log.
    finite = [line for line in lines if line.endswith(" finite")]
    check(len(finite) == len(names), f"log: one line ending ' finite' per case ({len(finite)} of {len(names)})")
    check(not [line for line in lines if re.search("ERROR|non-finite", line)], "log: no ERROR or non-finite line")
    # gpu_check.sh's awk pairs each "_baseline" case with its twin by the first field, the median ms the second.
    pairs = {line.split()[0]: line.split()[1] for line in finite}
    unpaired = [name for name in pairs if "_baseline/" in name and not (
        re.fullmatch(r"[0-9.]+", pairs[name]) and re.fullmatch(r"[0-9.]+", pairs.get(name.replace("_baseline/", "/", 1), "")))]
    check(not unpaired, f"log: every '_baseline' line and its twin's give the median ms as the second field ({unpaired[:3]})")
    check(len([line for line in lines if re.match("^(device|ceilings):", line)]) == 2,
          "log: the device and ceilings lines")
    check(any(line.startswith("case ") for line in lines), "log: the table header")
    check(any("--smoke" in line and "not measurements" in line for line in lines),
          "log: says the numbers are not measurements")
    try:
        with open(ours_path) as f:
            ours = json.load(f)
    except (OSError, ValueError) as error:
        check(False, f"--json: readable JSON ({error})")
        return finish()
    check(ours.get("smoke") is True and ours.get("tokens_per_batch") == 512 and ours.get("repeats") == 1,
          "JSON: smoke, 512 tokens per batch, 1 repeat")
    check("H200" in ours.get("device", "") and ours.get("sm") == 90 and ours.get("l2_bytes", 0) > 0,
          "JSON: the device, sm and L2 size")
    ceilings = ours.get("ceilings", {})
    check(all(isinstance(ceilings.get(k), (int, float)) and ceilings[k] > 0
              for k in ("copy_gb_per_s", "gemm_bf16_tflop_per_s")) and
          ceilings.get("copy", "").startswith("16 MiB") and ceilings.get("gemm", "").startswith("512^3"),
          f"JSON: both ceilings measured, sizes named ({ceilings})")
    cases = ours.get("cases", [])
    check([c.get("name") for c in cases] == names, "JSON: the cases of --list, in order")
    bad = [(c.get("name"), c.get("status"), c.get("error")) for c in cases if c.get("status") != "ok"]
    check(not bad, f"JSON: every case ok ({bad[:3]})")
    numbers = ("median_ms", "min_ms", "bytes", "gb_per_s", "percent_of_ceiling")
    incomplete = [c["name"] for c in cases if c.get("status") == "ok" and not all(
        isinstance(c.get(k), (int, float)) and math.isfinite(c[k]) and c[k] > 0 for k in numbers)]
    check(not incomplete, f"JSON: every case has positive finite {', '.join(numbers)} ({incomplete[:3]})")
    bound = [c["name"] for c in cases if c.get("bound") != ("compute" if c.get("flops", 0) > 0 else "memory")]
    check(not bound, f"JSON: compute-bound exactly where flops > 0 ({bound[:3]})")

    # FLOPs: the formulas of the header, and attention's as bench_attention_torch.py counts it.
    by_name = {c["name"]: c for c in cases}
    unequal = [name for name in by_name if "_baseline/" in name and
               by_name[name].get("bytes") != by_name.get(name.replace("_baseline/", "/", 1), {}).get("bytes")]
    check(not unequal, f"JSON: each '_baseline' case moves its twin's bytes ({unequal[:3]})")
    tokens, masked = 512, min(512 * 15 // 100, 16)  # --smoke caps the masked rows at 16
    flop_errors = []
    for model, (hidden, heads, inter, vocab) in MODELS.items():
        layers = {"qkv": (tokens, hidden, 3 * hidden), "attn_out": (tokens, hidden, hidden),
                  "ffn_up": (tokens, hidden, inter), "ffn_down": (tokens, inter, hidden),
                  "mlm_decoder": (masked, hidden, vocab), "mlm_decoder_dense": (masked, hidden, vocab)}
        for layer, (rows, fan_in, fan_out) in layers.items():
            parts = (("fwd", 2), ("bwd", 4)) + ((("bwd_dx", 2), ("bwd_dw", 2), ("bwd_db", 0))
                                                 if layer not in ("mlm_decoder", "mlm_decoder_dense") else ())
            for direction, factor in parts:
                name = f"linear_{direction}/{model}/{layer}"
                if name not in by_name or relative(by_name[name].get("flops", 0), factor * rows * fan_in * fan_out) > 1e-5:
                    if not (factor == 0 and by_name.get(name, {}).get("flops", 1) == 0):
                        flop_errors.append(name)
        for seq in (128, 512):
            forward = attention_flops(tokens // seq, heads, seq, hidden // heads)
            for variant in ("attention", "attention_train"):
                for kernel in ("", "_mma", "_mma_recompute_dq"):
                    for direction, factor in (("fwd", 1.0), ("bwd", 2.5)):
                        if kernel == "_mma_recompute_dq" and (direction == "fwd" or seq > 128):
                            continue  # (only where its backward differs from kMma's)
                        name = f"{variant}_{direction}{kernel}/{model}/s{seq}"
                        if relative(by_name.get(name, {}).get("flops", 0), factor * forward) > 1e-5:
                            flop_errors.append(name)
    check(not flop_errors, f"JSON: linear and attention FLOPs as the formulas say ({flop_errors[:3]})")

    # The GEMM plans: one per shape the linear cases ran (beyond the ceiling's), untuned.
    plans = ours.get("gemm_plans")
    check(ours.get("gemm_autotune") == 0 and isinstance(plans, list) and len(plans) >= 8 and
          all(pl.get("offered") == 1 and pl.get("chosen") == 0 and pl.get("candidate_ms") == [] and
              pl.get("algorithm", "").startswith("algo 0") and pl.get("m", 0) > 0 for pl in plans),
          f"JSON: the GEMM plans, each the heuristic's first ({len(plans or [])})")
    printed = [line for line in lines if line.startswith("  linear_")]
    check("GEMM plans (cuBLASLt column-major m x n x k; the algorithm each shape ran):" in lines and
          len(printed) == len(plans or []), f"log: one line per GEMM plan ({len(printed)})")

    # The attention kernels' resources: 9 kernels at each of 3 head dims, printed and in the JSON. The
    # emulation has no registers to report (0); its blocks an SM follow threads and shared memory alone,
    # so the persistent forward at head_dim 64 (58 KB) gets the 3 its purpose block counts on.
    kernels = ours.get("kernel_resources") or []
    check(len(kernels) == 27 and all(k.get("kernel", "").startswith("attention_") and k.get("threads") in (128, 256)
                                     and k.get("dynamic_shared_bytes", 0) > 0 and k.get("blocks_per_sm", 0) >= 1
                                     for k in kernels),
          f"JSON: the attention kernels' resources, 27 with blocks an SM ({len(kernels)})")
    persistent = [k for k in kernels if k.get("kernel") == "attention_forward_persistent_mma_kernel<64>"]
    check(len(persistent) == 1 and persistent[0]["blocks_per_sm"] == 3,
          f"JSON: the persistent forward at head_dim 64 fits 3 blocks an SM by shared memory ({persistent})")
    resource_lines = [line for line in lines if line.startswith("  attention_") and "blocks/SM" in line]
    check(any(line.startswith("Kernel resources (") for line in lines) and len(resource_lines) == len(kernels),
          f"log: one line per attention kernel's resources ({len(resource_lines)})")

    tuned_path = os.path.join(args.work, "tuned.json")
    p = run([args.bench, "--smoke", "--filter", "bert-base/attn_out", "--gemm-autotune", "4", "--json", tuned_path])
    print(p.stdout + p.stderr, flush=True)
    try:
        with open(tuned_path) as f:
            tuned = json.load(f)
    except (OSError, ValueError):
        tuned = {}
    tuned_plans = tuned.get("gemm_plans", [])
    products = {pl.get("product") for pl in tuned_plans}
    # attn_out's three products; dW twice: with the bias gradient in its epilogue (linear_bwd) and
    # without (linear_bwd_dw, and linear_bwd_baseline's KernelPaths::baseline()).
    epilogues = sorted(pl.get("bias_gradient_epilogue") for pl in tuned_plans if "(dW" in pl.get("product", ""))
    check(p.returncode == 0 and tuned.get("gemm_autotune") == 4 and len(tuned_plans) == 4 and len(products) == 3 and
          epilogues == [False, True],
          f"--gemm-autotune 4: exit 0, one plan for each of attn_out's three GEMMs, dW with and without the "
          f"bias-gradient epilogue ({p.returncode}, {products}, {epilogues})")
    for pl in tuned_plans:
        ms = pl.get("candidate_ms", [])
        chosen = pl.get("chosen", -1)
        check(pl.get("offered") == 3 and len(ms) == 3 and ms[2] is None and chosen in (0, 1) and
              None not in ms[:2] and ms[chosen] == min(ms[:2]) and pl.get("algorithm", "").startswith(f"algo {chosen},"),
              f"--gemm-autotune 4: {pl.get('product')} timed two algorithms, the third refused, the faster kept ({pl})")
    check(len([line for line in p.stdout.splitlines() if "ms by rank:" in line and line.endswith("x)")]) == 4,
          "--gemm-autotune 4: each plan's line gives the time of every rank and rank 0 against the chosen")

    # ---- bench_attention_torch.py's side-by-side on this JSON ----------------------------------------------
    plain = [c for c in cases if re.match(r"^attention_(fwd|bwd)/", c["name"])]
    check(len(plain) == 8, f"the plain attention cases SDPA is compared with: 8 ({len(plain)})")
    # Torch's numbers on ours' shapes (so ratios are formed), but the last case measured on the full-size
    # batch, as a real torch run next to a --smoke JSON would be: no ratio there, and a line saying why.
    reference = {"device": "test", "torch": "test", "cudnn": 0, "command": "synthetic", "repeats": 1, "cases": []}
    full_size = plain[-1]["shape"].replace("batch 1,", "batch 32,")
    check(full_size != plain[-1]["shape"], f"the last plain case has batch 1 at 512 tokens ({plain[-1]['shape']})")
    for index, case in enumerate(plain):
        for backend, scale in (("flash", 0.5), ("cudnn", 2.0), ("efficient", None)):
            entry = {"name": case["name"], "backend": backend, "model": case["name"].split("/")[1],
                     "shape": full_size if index == len(plain) - 1 else case["shape"]}
            if scale is None and index % 2:  # a backend refusing a shape is a result
                reference["cases"].append(dict(entry, status="error", error="No available kernel. Aborting."))
                continue
            ms = case["median_ms"] * (scale or 3.0)
            reference["cases"].append(dict(entry, status="ok", median_ms=ms, min_ms=ms,
                                           tflop_per_s=case["flops"] / (ms * 1e-3) / 1e12))
    reference_path = os.path.join(args.work, "reference.json")
    with open(reference_path, "w") as f:
        json.dump(reference, f)
    p = run([sys.executable, TORCH_BENCH, "--reference", reference_path, "--ours", ours_path])
    print(p.stdout + p.stderr, flush=True)
    check(p.returncode == 0, f"side by side: exit 0 (exit {p.returncode})")
    body = p.stdout.split("side by side", 1)[-1].splitlines()[2:]
    footnote = next((i for i, line in enumerate(body) if line.startswith("ours/best > 1")), len(body))
    rows = {line.split()[0]: line for line in body[:footnote] if line.strip()}
    for index, case in enumerate(plain):
        family, _, rest = case["name"].partition("/")
        twins = [family + "_mma/" + rest] + ([family + "_mma_recompute_dq/" + rest] if
                                               family == "attention_bwd" and rest.endswith("/s128") else [])
        twins += [family + "_mma_baseline/" + rest] if family == "attention_fwd" else []
        for ours_name in [case["name"]] + twins:
            mine = by_name.get(ours_name, {})
            theirs = [c["median_ms"] for c in reference["cases"] if c["name"] == case["name"] and c["status"] == "ok"]
            expected = "-" if index == len(plain) - 1 else f"{min(theirs) / mine.get('median_ms', float('nan')):.2f}x"
            row = rows.get(ours_name, "")
            check(row.endswith(" " + expected), f"side by side: {ours_name} ratio {expected} ({row.strip()[-12:]!r})")
    check(len(rows) == 22, f"side by side: 22 rows before the footnote ({len(rows)})")
    # The emulated kernels take seconds, and torch's 'efficient' numbers here are 3x ours: the columns
    # must stay aligned under the header whatever the magnitudes.
    header = p.stdout.split("side by side", 1)[-1].splitlines()[1]
    long_cells = [ms for ms in (c.get("median_ms", 0) for c in reference["cases"]) if ms >= 1000]
    check(all(len(row) == len(header) for row in rows.values()),
          f"side by side: every row as wide as the header ({len(header)}; {len(long_cells)} cells of >= 1000 ms)")
    why = [line for line in body[footnote + 1:] if line.startswith("no ratio, the shapes differ: ")]
    check(len(why) == 2 and all(full_size in line and plain[-1]["shape"] in line for line in why),
          f"side by side: the two rows of different shapes say so, naming both ({why})")

    # The exit contract gpu_check.sh relies on: a failed flash backend fails the script.
    for entry in reference["cases"]:
        if entry["backend"] == "flash" and entry["name"] == plain[0]["name"]:
            entry.clear()
            entry.update(name=plain[0]["name"], backend="flash", status="error", error="CUDA out of memory")
    with open(reference_path, "w") as f:
        json.dump(reference, f)
    p = run([sys.executable, TORCH_BENCH, "--reference", reference_path, "--ours", ours_path])
    check(p.returncode == 1, f"side by side: exit 1 when a flash case failed (exit {p.returncode})")
    broken = os.path.join(args.work, "broken.json")
    with open(broken, "w") as f:
        json.dump({"cases": [{"name": "attention_fwd/bert-base/s128", "backend": "flash", "status": "ok"}]}, f)
    p = run([sys.executable, TORCH_BENCH, "--reference", broken])
    check(p.returncode == 1 and "cases[0] lacks median_ms, tflop_per_s" in p.stderr,
          f"--reference with a case missing numbers: exit 1 naming them ({p.stderr.strip()[-80:]})")
    p = run([sys.executable, TORCH_BENCH, "--reference", reference_path, "--json", broken])
    check(p.returncode == 2 and "give one of them" in p.stderr, "--reference with --json: a usage error")

    # ---- compare_kernels.py: this JSON against a copy with one case twice as fast ---------------------------
    faster = json.loads(json.dumps(ours))
    target = "linear_fwd/bert-base/mlm_decoder"
    for case in faster["cases"]:
        if case["name"] == target:
            case["median_ms"] /= 2
    faster["cases"] = [c for c in faster["cases"] if c["name"] != "dropout_fwd/bert-base"]
    faster_path = os.path.join(args.work, "faster.json")
    with open(faster_path, "w") as f:
        json.dump(faster, f)
    p = run([sys.executable, COMPARE, ours_path, faster_path])
    print(p.stdout + p.stderr, flush=True)
    table = {line.split()[0]: line.split() for line in p.stdout.splitlines()[3:] if "/" in line.split()[0]}
    check(p.returncode == 0, f"compare_kernels: exit 0 (exit {p.returncode})")
    check(table.get(target, [""] * 4)[3] == "2.00x", f"compare_kernels: {target} 2.00x ({table.get(target)})")
    check(all(row[3] == "1.00x" for name, row in table.items() if name != target),
          "compare_kernels: every other case 1.00x")
    check("only in baseline: dropout_fwd/bert-base" in p.stdout, "compare_kernels: the case only the baseline has")
    dense = by_name.get(target + "_dense", {}).get("median_ms", float("nan")) / (by_name[target]["median_ms"] / 2)
    check(f"same run: {target} " in p.stdout and f"_dense {by_name[target + '_dense']['median_ms']:.4f} ms: "
          f"{dense:.2f}x" in p.stdout, "compare_kernels: the padded decoder beside the dense one, same run")
    twin = "cross_entropy_baseline/bert-base"
    ratio = by_name[twin]["median_ms"] / by_name["cross_entropy/bert-base"]["median_ms"]
    check("same run: cross_entropy/bert-base " in p.stdout and f"{twin} {by_name[twin]['median_ms']:.4f} ms: "
          f"{ratio:.2f}x" in p.stdout and p.stdout.count("same run: ") == len(
              [name for name in names if name.endswith("_dense") or "_baseline/" in name]),
          "compare_kernels: each specialised kernel beside its KernelPaths::baseline() twin, same run")
    faster["device"] = "another GPU"
    with open(faster_path, "w") as f:
        json.dump(faster, f)
    p = run([sys.executable, COMPARE, ours_path, faster_path])
    check(p.returncode == 2 and "do not compare" in p.stderr, "compare_kernels: different devices refused (exit 2)")
    return finish()


def finish():
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
