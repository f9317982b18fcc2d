#!/usr/bin/env python3
"""Fill-mask on the CPU: bert_infer beside transformers' pipeline("fill-mask") on the same checkpoint,
prompts, top-k and thread count, in the same run.

The checkpoint: a WordPiece vocabulary trained by bert_tokenizer on the corpus (--vocab-size), and a
BertForPreTraining of --shape made by transformers (seed 0, random weights: speed does not depend on
what the model knows) and saved with save_pretrained (model.safetensors). The prompts: --prompts
corpus lines of 20-120 characters with one word replaced by [MASK] (seed 1), the kind of list
`bert_infer --input FILE` and `--probe` take.

Each side in its own subprocess, one after the other, --repeats times (the medians are reported):
  ours         bert_infer --model DIR --input prompts.txt --json --top-k K --threads T --batch-size B,
               for B = 1 (one prompt a forward) and the default 64 (prompts sorted by length share
               forwards, padding masked out); "load" is a run with one prompt, "fill-mask" the
               rest of the batch run's wall time
  HF           pipeline("fill-mask", model=DIR, top_k=K, device=-1) on Debian's CPU torch,
               torch.set_num_threads(T); "load" is the pipeline's construction, "fill-mask" the
               call pipe(prompts, batch_size=B) for B = 1 (the pipeline's default) and 64
Memory: each subprocess's peak resident set (getrusage's ru_maxrss of that child): ours per run (the
load column's run holds one prompt), HF's once for its process (the pipeline's load and both batch
sizes; the interpreter and torch included, as a user runs it), with the peak right after the load.
Linux starts a child's ru_maxrss at its parent's resident set when it forks, so each is at least this
script's own (recorded as bench_parent_rss_mb; ~20 MB).
Agreement: the top-1 token of every [MASK] of our batched run against HF's batch-1 run, and the
largest relative difference of their top-1 scores (both fp32: rounding only).

    USE_TF=0 ~/.cache/bertforge/venv/bin/python bench/bench_infer_cpu.py --json bench/results/infer_cpu.json
"""
import argparse
import json
import os
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_bench_common import cpu_model, write_json  # noqa: E402

SHAPES = {
    "bert-base": dict(hidden=768, layers=12, heads=12, intermediate=3072),
    "demo": dict(hidden=128, layers=2, heads=2, intermediate=512),
}


def make_model_worker(spec):
    """Runs in the venv's python: a random BertForPreTraining of the shape, saved as safetensors."""
    import torch
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(0)
    s = SHAPES[spec["shape"]]
    vocab = sum(1 for _ in open(os.path.join(spec["dir"], "vocab.txt"), encoding="utf-8"))
    config = BertConfig(vocab_size=vocab, hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                        num_attention_heads=s["heads"], intermediate_size=s["intermediate"],
                        max_position_embeddings=spec["max_positions"])
    model = BertForPreTraining(config)
    model.save_pretrained(spec["dir"], safe_serialization=True)
    return {"vocab_size": vocab, "parameters": sum(p.numel() for p in model.parameters())}


def hf_worker(spec):
    """Runs in the venv's python: pipeline load, then fill-mask over the prompts per batch size."""
    import torch
    import transformers
    from transformers import pipeline

    torch.set_num_threads(spec["threads"])
    prompts = open(spec["prompts"], encoding="utf-8").read().splitlines()
    t0 = time.perf_counter()
    pipe = pipeline("fill-mask", model=spec["dir"], top_k=spec["top_k"], device=-1)
    result = {"torch": torch.__version__, "transformers": transformers.__version__,
              "torch_threads": torch.get_num_threads(), "load_s": time.perf_counter() - t0, "runs": {},
              "load_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    for batch_size in spec["batch_sizes"]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            answers = pipe(prompts, batch_size=batch_size)
        result["runs"][str(batch_size)] = time.perf_counter() - t0
        if batch_size == 1:
            result["top1"] = [top1(a) for a in answers]
    return result


def top1(answer):
    """[(token, score)] of each [MASK] of one prompt's answer (a list, or a list of lists)."""
    per_mask = answer if answer and isinstance(answer[0], list) else [answer]
    return [(c[0]["token"], c[0]["score"]) for c in per_mask]


def make_prompts(corpus, count, path):
    random.seed(1)
    lines = [ln.strip() for ln in open(corpus, encoding="utf-8") if 20 < len(ln.strip()) < 120]
    random.shuffle(lines)
    prompts = []
    for line in lines:
        words = line.split()
        if len(words) < 4 or "[MASK]" in line:
            continue
        words[random.randrange(1, len(words) - 1)] = "[MASK]"
        prompts.append(" ".join(words))
        if len(prompts) == count:
            break
    if len(prompts) < count:
        raise SystemExit(f"{corpus}: only {len(prompts)} usable lines for {count} prompts")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(prompts) + "\n")
    return prompts


def run(cmd, env, timeout):
    """(wall seconds, stdout, peak RSS in MB) of cmd; raises unless it exits 0 within timeout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        killer = threading.Timer(timeout, p.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)  # the child's own rusage: its peak RSS
        finally:
            killer.cancel()
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({p.returncode}):\n{stderr}")
    return wall, stdout, usage.ru_maxrss / 1024


def worker_json(kind, spec, env, timeout):
    _, out, peak_mb = run([sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(spec)], env, timeout)
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = peak_mb
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--infer", default="build/bert_infer", help="bert_infer binary")
    ap.add_argument("--tokenizer", default="build/bert_tokenizer", help="bert_tokenizer binary")
    ap.add_argument("--corpus", default=os.path.expanduser("~/.cache/bertforge/demo/ko_corpus.txt"))
    ap.add_argument("--shape", default="bert-base", choices=sorted(SHAPES))
    ap.add_argument("--vocab-size", type=int, default=30522)
    ap.add_argument("--max-positions", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both (default: all cores)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", default="/tmp/bench_infer_cpu", help="scratch directory (model, prompts)")
    ap.add_argument("--json", default="bench/results/infer_cpu.json", help="output JSON ('' = none)")
    ap.add_argument("--timeout", type=int, default=1800, help="per subprocess, seconds")
    ap.add_argument("--synthetic-corpus", type=int, default=0, metavar="LINES",
                    help="write a corpus of LINES random Hangul lines under --work and use it (the suite's run)")
    ap.add_argument("--check", action="store_true", help="exit 1 unless every top-1 token agrees with HF's")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.worker:
        kind, spec = args.worker[0], json.loads(args.worker[1])
        print(json.dumps(make_model_worker(spec) if kind == "model" else hf_worker(spec)))
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               OMP_WAIT_POLICY="passive", USE_TF="0", TOKENIZERS_PARALLELISM="false")
    model_dir = os.path.join(args.work, "model")
    os.makedirs(model_dir, exist_ok=True)
    if args.synthetic_corpus:
        args.corpus = os.path.join(args.work, "corpus.txt")
        rng = random.Random(2)
        words = ["".join(chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(rng.randint(1, 3))) for _ in range(300)]
        with open(args.corpus, "w", encoding="utf-8") as f:
            for _ in range(args.synthetic_corpus):
                f.write(" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) + ".\n")
    run([args.tokenizer, "train", "--input", args.corpus, "--out", model_dir, "--vocab-size", str(args.vocab_size),
         "--quiet"], env, args.timeout)
    made = worker_json("model", {"shape": args.shape, "dir": model_dir, "max_positions": args.max_positions}, env,
                       args.timeout)
    prompts_path = os.path.join(args.work, "prompts.txt")
    prompts = make_prompts(args.corpus, args.prompts, prompts_path)
    print(f"{args.shape}: {made['parameters'] / 1e6:.1f}M parameters, vocab {made['vocab_size']}; "
          f"{len(prompts)} prompts; {args.threads} threads; {cpu_model()}", flush=True)

    base = [args.infer, "--model", model_dir, "--json", "--top-k", str(args.top_k), "--threads", str(args.threads)]
    ours = {"load": [], "1": [], "64": []}
    hf = {"load": [], "1": [], "64": []}
    ours_rss = {"load": [], "1": [], "64": []}
    hf_rss = {"load": [], "all": []}
    ours_top1 = None
    hf_top1 = None
    versions = {}
    for repeat in range(args.repeats):
        wall, _, peak = run(base + ["--mask", prompts[0]], env, args.timeout)
        ours["load"].append(wall)
        ours_rss["load"].append(peak)
        for batch in ("1", "64"):
            wall, out, peak = run(base + ["--input", prompts_path, "--batch-size", batch], env, args.timeout)
            ours[batch].append(wall)
            ours_rss[batch].append(peak)
            if batch == "64":
                ours_top1 = [top1(json.loads(line)) for line in out.splitlines() if line.strip()]
        result = worker_json("hf", {"dir": model_dir, "prompts": prompts_path, "top_k": args.top_k,
                                    "threads": args.threads, "batch_sizes": [1, 64]}, env, args.timeout)
        hf["load"].append(result["load_s"])
        hf_rss["load"].append(result["load_peak_rss_mb"])
        hf_rss["all"].append(result["peak_rss_mb"])
        for batch in ("1", "64"):
            hf[batch].append(result["runs"][batch])
        hf_top1 = result["top1"]
        versions = {k: result[k] for k in ("torch", "transformers", "torch_threads")}
        print(f"repeat {repeat + 1}: ours load {ours['load'][-1]:.2f} s, batch 1 {ours['1'][-1]:.2f} s, "
              f"batch 64 {ours['64'][-1]:.2f} s; HF load {hf['load'][-1]:.2f} s, batch 1 {hf['1'][-1]:.2f} s, "
              f"batch 64 {hf['64'][-1]:.2f} s", flush=True)

    med = lambda xs: statistics.median(xs)  # noqa: E731
    load_ours, load_hf = med(ours["load"]), med(hf["load"])
    rows = []
    for side, batch, load, total, load_rss, rss in (
            ("ours", 1, load_ours, med(ours["1"]), med(ours_rss["load"]), med(ours_rss["1"])),
            ("ours", 64, load_ours, med(ours["64"]), med(ours_rss["load"]), med(ours_rss["64"])),
            ("HF pipeline", 1, load_hf, load_hf + med(hf["1"]), med(hf_rss["load"]), med(hf_rss["all"])),
            ("HF pipeline", 64, load_hf, load_hf + med(hf["64"]), med(hf_rss["load"]), med(hf_rss["all"]))):
        fill = max(total - load, 1e-9)
        rows.append({"side": side, "batch_size": batch, "load_s": load, "fill_mask_s": fill, "total_s": total,
                     "prompts_per_s": len(prompts) / fill, "load_peak_rss_mb": load_rss, "peak_rss_mb": rss})
    best_hf = min(r["fill_mask_s"] for r in rows if r["side"] != "ours")
    best_hf_total = min(r["total_s"] for r in rows if r["side"] != "ours")
    for r in rows:
        r["fill_mask_vs_best_hf"] = best_hf / r["fill_mask_s"]
        r["total_vs_best_hf"] = best_hf_total / r["total_s"]

    if len(ours_top1) != len(hf_top1) or any(len(o) != len(h) for o, h in zip(ours_top1, hf_top1)):
        raise SystemExit("the two sides answered different numbers of prompts or masks")
    masks = [(o, h) for ours_p, hf_p in zip(ours_top1, hf_top1) for o, h in zip(ours_p, hf_p)]
    same_top1 = sum(o[0] == h[0] for o, h in masks)
    max_score_diff = max(abs(o[1] - h[1]) / h[1] for o, h in masks)

    print("\n| side | batch | load s | fill-mask s | prompts/s | fill-mask vs best HF | total vs best HF "
          "| peak RSS MB (after load) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['side']} | {r['batch_size']} | {r['load_s']:.2f} | {r['fill_mask_s']:.2f} | "
              f"{r['prompts_per_s']:.1f} | {r['fill_mask_vs_best_hf']:.2f}x | {r['total_vs_best_hf']:.2f}x | "
              f"{r['peak_rss_mb']:.0f} ({r['load_peak_rss_mb']:.0f}) |")
    print(f"\ntop-1 agreement (ours batched vs HF batch 1): {same_top1}/{len(masks)} masks; "
          f"largest relative difference of their top-1 scores {max_score_diff:.2e}")

    record = {
        "benchmark": "bench_infer_cpu",
        "command": shlex.join([sys.executable] + sys.argv),
        "device": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "shape": args.shape,
        "parameters": made["parameters"],
        "vocab_size": made["vocab_size"],
        "prompts": len(prompts),
        "top_k": args.top_k,
        "repeats": args.repeats,
        "peer": versions,
        "raw_s": {"ours": ours, "hf": hf},
        "raw_peak_rss_mb": {"ours": ours_rss, "hf": hf_rss},
        "bench_parent_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows,
        "top1_agreement": {"masks": len(masks), "same_token": same_top1, "max_relative_score_diff": max_score_diff},
    }
    if args.json:
        write_json(record, args.json)
    if args.check and same_top1 != len(masks):
        raise SystemExit(f"--check: {len(masks) - same_top1} of {len(masks)} top-1 tokens differ from HF's")


if __name__ == "__main__":
    main()
