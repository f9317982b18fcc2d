#!/usr/bin/env python3
"""Data-preparation benchmark: `bert_prepare clean` + `bert_prepare build` beside the seed notebook's
Hugging Face NSP data step, measured in the same run on the same corpus and tokenizer.

  ours      `bert_prepare clean` (when the command exists) and `bert_prepare build --max-seq-len 128`,
            1 thread and all threads; the whole process is timed (tokenizer load, read, write included)
  peers     bench/hf_nsp_port.py, a line-for-line port of transformers' TextDatasetForNextSentencePrediction
            (block_size 128, short_seq_probability 0.1, nsp_probability 0.5, examples pickled like its
            cache; transformers needs torch for the class itself, so the algorithm is ported):
              HF port (per line)     BertTokenizerFast.from_pretrained(TOK).tokenize per line (seed style)
              HF port (encode_batch) tokenizers.BertWordPieceTokenizer.encode_batch over all lines,
                                     RAYON_NUM_THREADS = all threads
            each in its own Python process, with USE_TORCH=0 USE_TF=0 so that transformers does not import a
            torch that happens to be installed (the data step needs none; it would add ~200 MB and ~1 s).
            Their "seconds" are the work alone (file open -> pickle written; interpreter start, imports and
            tokenizer load excluded, which favours the peers); whole-process wall is the "proc s" column.
  memory    ours and the encode_batch peer again on the corpus repeated --copies times (a blank line
            between copies), ours also with --pool-mb 4; the per-line peer there with one run only.

The tokenizer is trained first with `bert_tokenizer train --vocab-size 16000`. MB/s = raw corpus bytes /
seconds. Peak RSS is each process's own ru_maxrss from os.wait4. Linux carries the spawning process's
RSS high-water mark into the child's ru_maxrss (vfork/exec keeps the parent's hiwater), so this script
imports nothing heavy and never holds the corpus: the floor (ru_maxrss of `true` spawned the same way,
~18 MB) is reported, and a peak equal to it means "at most this". Timings are medians of --repeat runs.
Prints tables, writes JSON (--json).
"""
import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def run_rss(cmd, env=None, check=True):
    """Runs cmd; returns (wall seconds, peak RSS bytes, stdout, exit code) using wait4 on that child."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as out_f, tempfile.TemporaryFile(mode="w+") as err_f:
        p = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, env=env, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        rc = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    if check and rc != 0:
        sys.exit(f"command failed ({rc}): {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss * 1024, out, rc


def median(xs):
    return statistics.median(xs)


def measure(cmd, repeat, env=None, before=None, parse=None):
    """Repeats cmd; returns dict with median wall, max peak RSS, all walls and the last parsed stdout."""
    walls, rsss, works, parsed = [], [], [], None
    for _ in range(repeat):
        if before:
            before()
        w, rss, out, _ = run_rss(cmd, env=env)
        walls.append(w)
        rsss.append(rss)
        if parse:
            parsed = parse(out)
            works.append(parsed["total_s"])
    r = {"wall_s": median(walls), "walls_s": walls, "peak_rss": max(rsss), "command": cmd}
    if parsed is not None:
        r["details_last_run"] = parsed
        r["work_s"] = median(works)
        r["works_s"] = works
    return r


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "?"


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cache = os.environ.get("BERT_CACHE", os.path.expanduser("~/.cache/bertforge"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepare-bin", default=os.path.join(root, "build", "bert_prepare"))
    ap.add_argument("--tokenizer-bin", default=os.path.join(root, "build", "bert_tokenizer"))
    ap.add_argument("--corpus", default=os.path.join(cache, "demo", "ko_corpus.txt"))
    ap.add_argument("--vocab-size", type=int, default=16000)
    ap.add_argument("--max-seq-len", type=int, default=128)
    ap.add_argument("--copies", type=int, default=10, help="memory-scaling input = corpus repeated N times")
    ap.add_argument("--small-pool-mb", type=int, default=4, help="--pool-mb of the bounded-memory run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-perline-big", action="store_true", help="skip the per-line peer on the N-copy input")
    ap.add_argument("--seed", type=int, default=42, help="random.seed of the Python peers")
    ap.add_argument("--json", default=os.path.join(root, "bench", "results", "prepare.json"))
    args = ap.parse_args()
    # no `import tokenizers / transformers` here: the parent's RSS would become every child's ru_maxrss floor
    threads = os.cpu_count() or 1
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="bench_prep_")
    py = sys.executable
    port = os.path.join(root, "bench", "hf_nsp_port.py")
    corpus_bytes = os.path.getsize(args.corpus)
    seq = str(args.max_seq_len)
    t_bench = time.perf_counter()

    # ---- tokenizer ---------------------------------------------------------------------------
    tok = os.path.join(work, "tok")
    w, rss, _, _ = run_rss([args.tokenizer_bin, "train", "--input", args.corpus, "--out", tok,
                            "--vocab-size", str(args.vocab_size), "--quiet"])
    with open(os.path.join(tok, "vocab.txt"), encoding="utf-8") as f:
        vocab_len = sum(1 for _ in f)
    tok_info = {"train_s": w, "train_peak_rss": rss, "vocab_size_requested": args.vocab_size, "vocab_size": vocab_len}

    # ---- inputs --------------------------------------------------------------------------------
    big = os.path.join(work, f"corpus_x{args.copies}.txt")
    with open(args.corpus, "rb") as f:
        f.seek(-1, os.SEEK_END)
        ends_nl = f.read(1) == b"\n"
    with open(big, "wb") as dst:
        for k in range(args.copies):
            if k:  # blank line: the copies stay separate documents (no trailing blank line, which would
                dst.write(b"\n" if ends_nl else b"\n\n")  # give HF's algorithm an empty document to crash on)
            with open(args.corpus, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    big_bytes = os.path.getsize(big)
    _, rss_floor, _, _ = run_rss(["true"])
    _, _, vers, _ = run_rss([py, "-c", "import platform, tokenizers, transformers; "
                                       "print(platform.python_version(), tokenizers.__version__, transformers.__version__)"],
                          env=dict(os.environ, USE_TORCH="0", USE_TF="0", USE_FLAX="0"))
    py_version, tokenizers_version, transformers_version = vers.split()

    def clear_dir(path):
        return lambda: shutil.rmtree(path, ignore_errors=True)

    def port_parse(out):
        return json.loads(out.strip().splitlines()[-1])

    def build_cmd(inputs, out, n, pool_mb=None):
        cmd = [args.prepare_bin, "build", "--tokenizer", tok, "--input", *inputs, "--out", out,
               "--max-seq-len", seq, "--threads", str(n), "--quiet"]
        if pool_mb is not None:
            cmd += ["--pool-mb", str(pool_mb)]
        return cmd

    def manifest(out):
        with open(os.path.join(out, "manifest.json")) as f:
            m = json.load(f)
        return {"documents": m.get("documents"), "sentences": m.get("sentences"),
                "examples": sum(s["examples"] for s in m.get("shards", [])),
                "tokens": sum(s["tokens"] for s in m.get("shards", [])),
                "shard_bytes": sum(os.path.getsize(os.path.join(out, s["file"])) for s in m.get("shards", []))}

    rows, big_rows = {}, {}

    # ---- ours: clean ---------------------------------------------------------------------------
    _, _, _, clean_rc = run_rss([args.prepare_bin, "clean", "--help"], check=False)
    clean_available = clean_rc == 0
    cleaned_inputs = None
    if clean_available:
        cleaned = os.path.join(work, "cleaned.txt")

        def clear_cleaned():
            if os.path.isdir(cleaned):
                shutil.rmtree(cleaned)
            elif os.path.exists(cleaned):
                os.remove(cleaned)

        r = measure([args.prepare_bin, "clean", "--input", args.corpus, "--out", cleaned], args.repeat,
                    before=clear_cleaned)
        if os.path.isdir(cleaned):  # --out may name a directory of files
            cleaned_inputs = sorted(glob.glob(os.path.join(cleaned, "*.txt")) + glob.glob(os.path.join(cleaned, "*.gz")))
        else:
            cleaned_inputs = [cleaned]
        r["output_bytes"] = sum(os.path.getsize(p) for p in cleaned_inputs)
        rows["ours_clean"] = r

    # ---- ours: build (1 thread, all threads) on the corpus as given --------------------------------
    out = os.path.join(work, "shards")
    for n in sorted({1, threads}):
        r = measure(build_cmd([args.corpus], out, n), args.repeat, before=clear_dir(out))
        r["threads"] = n
        r["output"] = manifest(out)
        rows[f"ours_build_{n}t"] = r
    if clean_available:
        r = measure(build_cmd(cleaned_inputs, out, threads), args.repeat, before=clear_dir(out))
        r["threads"] = threads
        r["output"] = manifest(out)
        rows["ours_build_cleaned"] = r
        c = rows["ours_clean"]
        rows["ours_clean_build"] = {"wall_s": c["wall_s"] + r["wall_s"], "peak_rss": max(c["peak_rss"], r["peak_rss"]),
                                    "threads": threads, "note": "median clean + median build of its output"}

    # ---- peers ---------------------------------------------------------------------------------
    env_py = dict(os.environ, USE_TORCH="0", USE_TF="0", USE_FLAX="0")
    env_all = dict(env_py, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
    pkl = os.path.join(work, "cached_nsp.pkl")

    def port_cmd(mode, inp):
        return [py, port, "--mode", mode, "--tokenizer", tok, "--input", inp, "--out", pkl,
                "--block-size", seq, "--seed", str(args.seed)]

    rows["hf_perline"] = measure(port_cmd("perline", args.corpus), args.repeat, env=env_py, parse=port_parse)
    rows["hf_batch"] = measure(port_cmd("batch", args.corpus), args.repeat, env=env_all, parse=port_parse)
    baseline = {}
    for mode in ("perline", "batch"):
        _, rss, out_s, _ = run_rss([py, port, "--mode", mode, "--tokenizer", tok], env=env_py if mode == "perline" else env_all)
        baseline[mode] = {"peak_rss": rss, "load_s": port_parse(out_s)["load_s"]}

    # ---- memory scaling on the N-copy input ----------------------------------------------------------
    r = measure(build_cmd([big], out, threads), args.repeat, before=clear_dir(out))
    r["output"] = manifest(out)
    big_rows["ours_build"] = r
    r = measure(build_cmd([big], out, threads, args.small_pool_mb), args.repeat, before=clear_dir(out))
    r["output"] = manifest(out)
    big_rows["ours_build_small_pool"] = r
    big_rows["hf_batch"] = measure(port_cmd("batch", big), args.repeat, env=env_all, parse=port_parse)
    if not args.skip_perline_big:
        big_rows["hf_perline"] = measure(port_cmd("perline", big), 1, env=env_py, parse=port_parse)
    total_bench_s = time.perf_counter() - t_bench
    shutil.rmtree(work, ignore_errors=True)

    # ---- derived numbers -------------------------------------------------------------------------
    def finish(table, nbytes):
        ref = {k: table[k].get("work_s", table[k]["wall_s"]) for k in ("hf_perline", "hf_batch") if k in table}
        for r in table.values():
            s = r.get("work_s", r["wall_s"])
            r["seconds"] = s
            r["mb_s"] = nbytes / 1e6 / s
            for k, v in ref.items():
                r[f"speedup_vs_{k}"] = v / s

    finish(rows, corpus_bytes)
    finish(big_rows, big_bytes)

    keys = ("documents", "sentences", "examples", "tokens", "random_next", "max_len", "output_bytes")
    peers_agree = all(rows["hf_perline"]["details_last_run"][k] == rows["hf_batch"]["details_last_run"][k] for k in keys)
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    result = {
        "device": f"{cpu_model()}, {threads} threads",
        "command": " ".join([os.path.relpath(sys.argv[0], root)] + sys.argv[1:]),
        "git_commit": commit, "python": py_version, "tokenizers": tokenizers_version,
        "transformers": transformers_version, "rss_floor": rss_floor, "loadavg_before": load_before, "bench_seconds": total_bench_s,
        "corpus": args.corpus, "corpus_bytes": corpus_bytes, "copies": args.copies, "big_input_bytes": big_bytes,
        "max_seq_len": args.max_seq_len, "repeat": args.repeat, "clean_available": clean_available,
        "tokenizer": tok_info, "python_peer_baseline": baseline, "peers_identical_output": peers_agree,
        "peer_env": {"USE_TORCH": "0", "USE_TF": "0", "USE_FLAX": "0", "RAYON_NUM_THREADS (encode_batch)": threads},
        "seconds_definition": "ours: whole-process wall; HF ports: work only (file open -> pickle written), "
                              "whole-process wall in wall_s",
        "results_1x": rows, f"results_{args.copies}x": big_rows,
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)

    # ---- tables ----------------------------------------------------------------------------------
    print(f"device: {result['device']}; tokenizers {tokenizers_version}, transformers {transformers_version}; "
          f"corpus {corpus_bytes / 1e6:.2f} MB; vocab {vocab_len}; max_seq_len {args.max_seq_len}; "
          f"median of {args.repeat}; load before {load_before[0]:.2f}")
    print("seconds: ours = whole process; HF ports = work only (imports/tokenizer load excluded; whole process in "
          "'proc s')")
    hdr = f"{'':32} {'seconds':>8} {'proc s':>7} {'MB/s':>8} {'peak RSS MB':>12} {'x HF per-line':>14} {'x HF batch':>11}"

    def line(label, r):
        if r is None:
            return f"{label:32} {'not available':>8}"
        return (f"{label:32} {r['seconds']:8.3f} {r['wall_s']:7.3f} {r['mb_s']:8.2f} {r['peak_rss'] / 1e6:12.1f} "
                f"{r.get('speedup_vs_hf_perline', float('nan')):13.1f}x {r.get('speedup_vs_hf_batch', float('nan')):10.1f}x")

    print(f"\n1x corpus ({corpus_bytes / 1e6:.2f} MB)")
    print(hdr)
    print(line("our clean", rows.get("ours_clean")) if clean_available else f"{'our clean':32} clean: not available")
    for n in sorted({1, threads}):
        print(line(f"our build ({n} thread{'s' if n > 1 else ''})", rows[f"ours_build_{n}t"]))
    if clean_available:
        print(line(f"our clean+build ({threads} threads)", rows["ours_clean_build"]))
    else:
        print(f"{'our clean+build':32} clean: not available")
    print(line("HF port (BertTokenizerFast/line)", rows["hf_perline"]))
    print(line("HF port (encode_batch)", rows["hf_batch"]))

    print(f"\n{args.copies}x corpus ({big_bytes / 1e6:.2f} MB): memory scaling")
    print(hdr + f" {'RSS 10x/1x':>11}")
    rss1 = {"ours_build": rows[f"ours_build_{threads}t"]["peak_rss"], "ours_build_small_pool": rows[f"ours_build_{threads}t"]["peak_rss"],
            "hf_batch": rows["hf_batch"]["peak_rss"], "hf_perline": rows["hf_perline"]["peak_rss"]}
    labels = {"ours_build": f"our build ({threads}t, pool 256 MB)",
              "ours_build_small_pool": f"our build ({threads}t, pool {args.small_pool_mb} MB)",
              "hf_perline": "HF port (BertTokenizerFast/line)", "hf_batch": "HF port (encode_batch)"}
    for k in ("ours_build", "ours_build_small_pool", "hf_perline", "hf_batch"):
        if k in big_rows:
            extra = "  (1 run)" if k == "hf_perline" else ""
            print(line(labels[k], big_rows[k]) + f" {big_rows[k]['peak_rss'] / rss1[k]:10.1f}x{extra}")
    print(f"\nPython peer baseline RSS (interpreter + imports + tokenizer, no data): per-line "
          f"{baseline['perline']['peak_rss'] / 1e6:.1f} MB, encode_batch {baseline['batch']['peak_rss'] / 1e6:.1f} MB")
    o, p = rows[f"ours_build_{threads}t"]["output"], rows["hf_perline"]["details_last_run"]
    hf_content = p['tokens'] - p['num_special_pair'] * p['examples']
    print(f"outputs (1x, tokens without specials): ours {o['examples']} examples / {o['tokens']} tokens "
          f"(train+valid, truncate_seq_pair); HF port {p['examples']} examples / {hf_content} tokens, max len {p['max_len']}, "
          f"{p['over_block_size']} over block_size (no truncate_seq_pair in transformers {transformers_version}); "
          f"the two HF ports give identical output: {'yes' if peers_agree else 'NO'}")
    print(f"peak RSS floor (ru_maxrss of `true` spawned by this script): {rss_floor / 1e6:.1f} MB")
    print(f"benchmark time {total_bench_s:.0f} s; json: {args.json}")


if __name__ == "__main__":
    main()
