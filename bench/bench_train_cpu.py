#!/usr/bin/env python3
"""CPU training throughput: bench_train_step (ours) beside Hugging Face BertForPreTraining +
torch.optim.AdamW on the same machine, shapes, batch and thread count, in the same run.

Per shape, each in its own subprocess, one after the other:
  ours sparse   bench_train_step (MLM head on the masked tokens only: the engine's default), which
                also measures cblas_sgemm FLOP/s in the same process ([B*S, H] x [H, I] and 2048^3)
  ours dense    bench_train_step --dense-mlm (MLM head on every token, as HF computes it)
  HF eager      BertForPreTraining(BertConfig(...)) in train mode, dropout 0.1, AdamW(lr 1e-4, eps 1e-8,
                weight_decay 0.01) with HF Trainer's no-decay groups (biases, LayerNorm weights),
                clip_grad_norm_(1.0), torch.set_num_threads(T); loss = outputs.loss
  HF sdpa       the same with attn_implementation="sdpa", when this transformers + torch allow it
                (transformers needs torch >= 2.1.1 for BERT's SDPA path; otherwise recorded as unsupported)
One step = zero grads, forward + backward, clip, AdamW: W warm-up steps, then N timed; the median step
time gives tokens/s = B*S / step. The batch: [CLS] A [SEP] B [SEP], random ids, no padding, token types
0/1, round(0.15 * (S - 3)) labelled positions per sequence (labels -100 elsewhere), random NSP labels.

FLOP/s use the same formula for everyone (engine/bert.h's training_flops: 6 * params-FLOPs per token of
the encoder + attention + MLM head on the rows it runs on + pooler/NSP). ours / sgemm = our achieved
model FLOP/s over the best sgemm FLOP/s measured in our process.

OMP_WAIT_POLICY (--wait-policy, default passive) is set in the environment of every subprocess, ours and
HF alike, and OPENBLAS_NUM_THREADS / OMP_NUM_THREADS = T. --compare-wait-policy also runs the demo shape
under the unset (libgomp default) policy for both sides and records it.

    USE_TF=0 /root/.cache/bertforge/venv/bin/python bench/bench_train_cpu.py \
        --bench build/bench/bench_train_step --json bench/results/train_cpu.json
"""
import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

SHAPES = {
    "demo": dict(hidden=128, layers=2, heads=4, intermediate=512, vocab=16000, seq=128, batch=32),  # configs/demo_cpu.toml
    "bert-base": dict(hidden=768, layers=12, heads=12, intermediate=3072, vocab=30522, seq=128, batch=8),
}

from hf_bench_common import (cpu_model, hf_decay_groups, make_batch, masked_per_sequence, training_flops,  # noqa: E402
                             write_json)


# ---- the HF side (runs in its own process: `bench_train_cpu.py --hf-worker JSON`) -----------------------

def hf_worker(spec):
    import torch
    import transformers
    from transformers import BertConfig, BertForPreTraining

    s, threads = spec["shape"], spec["threads"]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    result = {"torch": torch.__version__, "transformers": transformers.__version__,
              "torch_threads": torch.get_num_threads(), "attn_implementation_requested": spec["attn"]}
    config = BertConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                        num_attention_heads=s["heads"], intermediate_size=s["intermediate"],
                        hidden_dropout_prob=spec["dropout"], attention_probs_dropout_prob=spec["dropout"],
                        max_position_embeddings=512)
    try:
        if spec["attn"] == "eager":
            model = BertForPreTraining(config)
        else:
            model = BertForPreTraining._from_config(config, attn_implementation=spec["attn"])
    except Exception as e:  # e.g. SDPA needs torch >= 2.1.1
        result["error"] = f"{type(e).__name__}: {e}"
        return result
    result["attn_implementation"] = getattr(model.config, "_attn_implementation", "eager")
    result["parameters"] = sum(p.numel() for p in model.parameters())
    model.train()

    groups = hf_decay_groups(torch, model)  # HF Trainer.create_optimizer
    optimizer = torch.optim.AdamW(groups, lr=1e-4, eps=1e-8, weight_decay=0.01)

    B, S = s["batch"], s["seq"]
    batch = make_batch(torch, s)
    labels = batch["labels"]

    times, losses = [], []
    for step in range(spec["warmup"] + spec["steps"]):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        dt = time.perf_counter() - t0
        losses.append(float(out.loss))
        if step >= spec["warmup"]:
            times.append(dt)
    step_s = statistics.median(times)
    flops = training_flops(s, B * S)  # HF runs the MLM decoder on every token
    result.update(step_ms=[round(1e3 * t, 3) for t in times], median_step_ms=1e3 * step_s,
                  tokens_per_s=B * S / step_s, flops_per_step=flops, flops_per_s=flops / step_s,
                  num_masked=int((labels != -100).sum()), first_loss=losses[0], last_loss=losses[-1],
                  optimizer_foreach=optimizer.defaults.get("foreach"))
    return result


# ---- the driver -------------------------------------------------------------------------------------------

def cpu_flags():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx", "fma")))
    except OSError:
        pass
    return []


def busy_processes(limit=5):
    """Other processes using CPU right now (ps), to explain a noisy run."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,etime,comm", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()
    except Exception:
        return []
    rows = []
    for line in out[1:]:
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[0] != str(os.getpid()):
            try:
                if float(parts[1]) >= 5.0:
                    rows.append({"pid": int(parts[0]), "pcpu": float(parts[1]), "etime": parts[2], "comm": parts[3]})
            except ValueError:
                pass
    return rows[:limit]


def run_json(cmd, env, timeout):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    result = json.loads(p.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = round(wall, 2)
    result["load_before"] = None
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf-worker", help=argparse.SUPPRESS)
    ap.add_argument("--bench", default="build/bench/bench_train_step", help="bench_train_step binary")
    ap.add_argument("--shapes", default="demo,bert-base", help="comma-separated: " + ",".join(SHAPES))
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both (default: all cores)")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--demo-steps", type=int, default=10)
    ap.add_argument("--demo-warmup", type=int, default=2)
    ap.add_argument("--base-steps", type=int, default=3)
    ap.add_argument("--base-warmup", type=int, default=1)
    ap.add_argument("--wait-policy", default="passive", choices=["passive", "active", "default"],
                    help="OMP_WAIT_POLICY for every subprocess (default: unset)")
    ap.add_argument("--compare-wait-policy", action="store_true",
                    help="also run the demo shape with OMP_WAIT_POLICY unset, both sides")
    ap.add_argument("--no-sdpa", action="store_true", help="skip the HF sdpa attempt")
    ap.add_argument("--json", default="bench/results/train_cpu.json", help="output JSON ('' = none)")
    ap.add_argument("--timeout", type=int, default=900, help="per subprocess, seconds")
    args = ap.parse_args()

    if args.hf_worker:
        print(json.dumps(hf_worker(json.loads(args.hf_worker))))
        return

    started = time.time()
    bench = os.path.abspath(args.bench)
    if not os.path.exists(bench):
        sys.exit(f"{bench} not found: build it with scripts/build.sh")
    threads = args.threads

    def env_for(policy):
        env = dict(os.environ, USE_TF="0", OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
        env.pop("OMP_WAIT_POLICY", None)
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        return env

    def ours(s, steps, warmup, dense, sgemm, policy):
        cmd = [bench] + [f"--{k}={v}" for k, v in s.items()] + [
            f"--steps={steps}", f"--warmup={warmup}", f"--threads={threads}", f"--dropout={args.dropout}", "--json"]
        if dense:
            cmd.append("--dense-mlm")
        if not sgemm:
            cmd.append("--no-sgemm")
        load = os.getloadavg()
        r = run_json(cmd, env_for(policy), args.timeout)
        r["load_before"] = load
        r["command"] = shlex.join(cmd)
        return r

    def hf(s, steps, warmup, attn, policy):
        spec = dict(shape=s, threads=threads, steps=steps, warmup=warmup, dropout=args.dropout, attn=attn)
        cmd = [sys.executable, os.path.abspath(__file__), "--hf-worker", json.dumps(spec)]
        load = os.getloadavg()
        r = run_json(cmd, env_for(policy), args.timeout)
        r["load_before"] = load
        return r

    record = {
        "benchmark": "CPU training throughput: bertforge bench_train_step vs HF BertForPreTraining + torch AdamW",
        "command": shlex.join([sys.executable] + sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "device": {"cpu": cpu_model(), "cores": os.cpu_count(), "simd": cpu_flags(),
                   "platform": platform.platform()},
        "threads": threads,
        "omp_wait_policy": args.wait_policy,
        "load_before": os.getloadavg(),
        "busy_processes_before": busy_processes(),
        "shapes": {},
    }
    print(f"device: {record['device']['cpu']}, {record['device']['cores']} cores; threads {threads}; "
          f"OMP_WAIT_POLICY={args.wait_policy}; load {record['load_before']}", flush=True)
    for p in record["busy_processes_before"]:
        print(f"  busy: pid {p['pid']} {p['comm']} {p['pcpu']}% CPU (up {p['etime']})", flush=True)

    for name in args.shapes.split(","):
        s = SHAPES[name]
        steps, warmup = (args.demo_steps, args.demo_warmup) if name == "demo" else (args.base_steps, args.base_warmup)
        entry = {"shape": s, "steps": steps, "warmup": warmup}
        print(f"[{name}] ours (sparse MLM head) ...", flush=True)
        entry["ours_sparse"] = ours(s, steps, warmup, False, True, args.wait_policy)
        print(f"[{name}] ours (dense MLM head) ...", flush=True)
        entry["ours_dense"] = ours(s, steps, warmup, True, False, args.wait_policy)
        print(f"[{name}] HF eager ...", flush=True)
        entry["hf_eager"] = hf(s, steps, warmup, "eager", args.wait_policy)
        if not args.no_sdpa:
            print(f"[{name}] HF sdpa ...", flush=True)
            entry["hf_sdpa"] = hf(s, steps, warmup, "sdpa", args.wait_policy)
        if args.compare_wait_policy and name == "demo" and args.wait_policy != "default":
            print(f"[{name}] OMP_WAIT_POLICY unset: ours sparse, HF eager ...", flush=True)
            entry["wait_policy_unset"] = {
                "ours_sparse": ours(s, steps, warmup, False, False, "default"),
                "hf_eager": hf(s, steps, warmup, "eager", "default"),
            }
        entry["load_after"] = os.getloadavg()
        entry["busy_processes_after"] = busy_processes()
        record["shapes"][name] = entry

    # The table.
    rows = []
    for name, e in record["shapes"].items():
        hf_runs = [e["hf_eager"]] + ([e["hf_sdpa"]] if "hf_sdpa" in e and "error" not in e["hf_sdpa"] else [])
        hf_best = max(hf_runs, key=lambda r: r["tokens_per_s"])
        sp, de = e["ours_sparse"], e["ours_dense"]
        sgemm_best = max(sp["sgemm_model_shaped"]["flops_per_s"], sp["sgemm_2048"]["flops_per_s"])
        summary = {
            "ours_sparse_tokens_per_s": sp["tokens_per_s"], "ours_dense_tokens_per_s": de["tokens_per_s"],
            "hf_tokens_per_s": hf_best["tokens_per_s"], "hf_attn_implementation": hf_best["attn_implementation"],
            "ratio_sparse": sp["tokens_per_s"] / hf_best["tokens_per_s"],
            "ratio_dense": de["tokens_per_s"] / hf_best["tokens_per_s"],
            "ours_sparse_gflops": sp["flops_per_s"] / 1e9, "ours_dense_gflops": de["flops_per_s"] / 1e9,
            "hf_gflops": hf_best["flops_per_s"] / 1e9,
            "sgemm_model_shaped_gflops": sp["sgemm_model_shaped"]["flops_per_s"] / 1e9,
            "sgemm_2048_gflops": sp["sgemm_2048"]["flops_per_s"] / 1e9,
            "fraction_sparse": sp["flops_per_s"] / sgemm_best, "fraction_dense": de["flops_per_s"] / sgemm_best,
            "hf_fraction": hf_best["flops_per_s"] / sgemm_best,
        }
        e["summary"] = summary
        rows.append((name, summary))
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record["wall_s"] = round(time.time() - started, 1)
    first_hf = next(iter(record["shapes"].values()))["hf_eager"]
    record["versions"] = {"python": platform.python_version(), "torch": first_hf["torch"],
                          "transformers": first_hf["transformers"],
                          "blas": next(iter(record["shapes"].values()))["ours_sparse"]["blas"]}

    header = ("| shape | ours tok/s (sparse MLM) | ours tok/s (dense MLM) | HF tok/s | ratio sparse / dense "
              "| ours GFLOP/s (sparse / dense) | HF GFLOP/s | sgemm GFLOP/s (model-shaped / 2048³) "
              "| ours / sgemm (sparse / dense) |")
    print()
    print(header)
    print("|" + "---|" * 9)
    for name, m in rows:
        print(f"| {name} | {m['ours_sparse_tokens_per_s']:.0f} | {m['ours_dense_tokens_per_s']:.0f} "
              f"| {m['hf_tokens_per_s']:.0f} ({m['hf_attn_implementation']}) "
              f"| {m['ratio_sparse']:.2f}x / {m['ratio_dense']:.2f}x "
              f"| {m['ours_sparse_gflops']:.1f} / {m['ours_dense_gflops']:.1f} | {m['hf_gflops']:.1f} "
              f"| {m['sgemm_model_shaped_gflops']:.1f} / {m['sgemm_2048_gflops']:.1f} "
              f"| {100 * m['fraction_sparse']:.0f}% / {100 * m['fraction_dense']:.0f}% |")
    for name, e in record["shapes"].items():
        if "hf_sdpa" in e and "error" in e["hf_sdpa"]:
            print(f"\n[{name}] HF sdpa: not available ({e['hf_sdpa']['error'][:200]})")
        if "wait_policy_unset" in e:
            w = e["wait_policy_unset"]
            print(f"[{name}] OMP_WAIT_POLICY unset: ours sparse {w['ours_sparse']['tokens_per_s']:.0f} tok/s, "
                  f"HF eager {w['hf_eager']['tokens_per_s']:.0f} tok/s")
    print(f"\nload before {record['load_before']}, total {record['wall_s']} s")
    if args.json:
        write_json(record, args.json)


if __name__ == "__main__":
    main()
