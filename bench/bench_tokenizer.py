#!/usr/bin/env python3
"""Tokenizer benchmark: bert_tokenizer beside Hugging Face `tokenizers` in the same run, on the same
files and settings (cased Korean: clean_text + chinese chars, no lowercase/strip; all characters
kept in the alphabet).

  training: wall time of the whole training call and peak RSS of the process doing it
            (HF: a fresh Python process; its bare-interpreter RSS is shown separately)
  encoding: MB/s of raw text -> ids, 1 thread and all threads. HF: encode_batch and encode_batch_fast
            (no offsets) over all lines with RAYON_NUM_THREADS set, timed around the call only (file
            already in memory); the faster of the two is the peer. Ours: the
            whole `bert_tokenizer encode` process (vocab load, read, write to /dev/null included).

Prints a table, writes JSON (--json). Timings are medians of --repeat runs.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HF_TRAIN = r"""
import sys, time
from tokenizers import BertWordPieceTokenizer
corpus, out, vocab_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
t0 = time.perf_counter()
t.train([corpus], vocab_size=vocab_size, min_frequency=2, limit_alphabet=10**9,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False)
print(time.perf_counter() - t0)
import os; os.makedirs(out, exist_ok=True); t.save_model(out)
"""

HF_ENCODE = r"""
import sys, time
from tokenizers import BertWordPieceTokenizer
vocab, corpus = sys.argv[1], sys.argv[2]
t = BertWordPieceTokenizer(vocab, clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
lines = open(corpus, encoding="utf-8").read().split("\n")
t0 = time.perf_counter()
enc = t.encode_batch(lines, add_special_tokens=False)
t1 = time.perf_counter()
fast = t._tokenizer.encode_batch_fast(lines, add_special_tokens=False)  # no offsets: HF's fastest path
t2 = time.perf_counter()
assert [e.ids for e in enc[:1000]] == [e.ids for e in fast[:1000]]
print(t1 - t0, t2 - t1)
"""




# Linux starts a child's ru_maxrss at its spawner's resident set (a vfork/fork + exec keeps the old
# high-water mark), so a child of this interpreter never reads below its ~20 MB. GNU time (Debian's
# `time`, which scripts/setup.sh installs) forks the command from a process of ~2 MB instead.
GNU_TIME = "/usr/bin/time"


def run_rss(cmd, env=None):
    """Runs cmd and returns (wall seconds, peak RSS bytes, stdout): the peak from GNU time's %M where
    it is installed, else from wait4 on the child (then at least this interpreter's RSS)."""
    use_time = os.access(GNU_TIME, os.X_OK)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as out_f, tempfile.TemporaryFile(mode="w+") as err_f, \
            tempfile.NamedTemporaryFile(mode="r") as rss_f:
        full = [GNU_TIME, "-f", "%M", "-o", rss_f.name] + cmd if use_time else cmd
        p = subprocess.Popen(full, stdout=out_f, stderr=err_f, env=env, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
        peak = int(rss_f.read().split()[-1]) * 1024 if use_time and p.returncode == 0 else usage.ru_maxrss * 1024
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{err}")
    return wall, peak, out


def median(xs):
    return statistics.median(xs)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(root, "build", "bert_tokenizer"))
    ap.add_argument("--corpus", default=os.path.join(os.environ.get("BERT_CACHE", os.path.expanduser("~/.cache/bertforge")),
                                                     "demo", "ko_corpus.txt"))
    ap.add_argument("--vocab-size", type=int, default=16000)
    ap.add_argument("--encode-copies", type=int, default=10, help="encode input = corpus repeated N times")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--big-mb", type=int, default=0,
                    help="also train both on a salted corpus of this many MB (bench/make_big_corpus.py), once each")
    ap.add_argument("--json", default=os.path.join(root, "bench", "results", "tokenizer.json"))
    args = ap.parse_args()
    import tokenizers

    threads = os.cpu_count() or 1
    work = tempfile.mkdtemp(prefix="bench_tok_")
    corpus_bytes = os.path.getsize(args.corpus)
    py = sys.executable
    rows = {}

    # ---- training ----------------------------------------------------------------------------
    ours_t, ours_rss = [], []
    for _ in range(args.repeat):
        w, rss, _ = run_rss([args.bin, "train", "--input", args.corpus, "--out", os.path.join(work, "ours"),
                             "--vocab-size", str(args.vocab_size), "--min-frequency", "2", "--quiet"])
        ours_t.append(w)
        ours_rss.append(rss)
    hf_t, hf_rss = [], []
    for _ in range(args.repeat):
        w, rss, out = run_rss([py, "-c", HF_TRAIN, args.corpus, os.path.join(work, "hf"), str(args.vocab_size)])
        hf_t.append(float(out.split()[0]))
        hf_rss.append(rss)
    _, py_rss, _ = run_rss([py, "-c", "import tokenizers"])
    rows["train"] = {"ours_s": median(ours_t), "hf_s": median(hf_t), "ours_peak_rss": max(ours_rss),
                     "hf_peak_rss": max(hf_rss), "python_baseline_rss": py_rss}

    if args.big_mb:
        big = os.path.join(work, "big.txt")
        subprocess.run([py, os.path.join(root, "bench", "make_big_corpus.py"), args.corpus, big, str(args.big_mb)],
                       check=True, capture_output=True)
        w_ours, rss_ours, _ = run_rss([args.bin, "train", "--input", big, "--out", os.path.join(work, "ours_big"),
                                       "--vocab-size", "32000", "--min-frequency", "2", "--quiet"])
        _, rss_hf, out = run_rss([py, "-c", HF_TRAIN, big, os.path.join(work, "hf_big"), "32000"])
        rows["train_big"] = {"mb": os.path.getsize(big) / 1e6, "vocab_size": 32000, "ours_s": w_ours,
                             "hf_s": float(out.split()[0]), "ours_peak_rss": rss_ours, "hf_peak_rss": rss_hf}
        os.remove(big)

    # ---- encoding ----------------------------------------------------------------------------
    enc_path = os.path.join(work, "encode_input.txt")
    with open(args.corpus, "rb") as f:
        data = f.read()
    with open(enc_path, "wb") as f:
        for _ in range(args.encode_copies):
            f.write(data)
    enc_bytes = os.path.getsize(enc_path)
    vocab = os.path.join(work, "ours", "vocab.txt")
    for n in sorted({1, threads}):
        ours = []
        for _ in range(args.repeat):
            w, _, _ = run_rss([args.bin, "encode", "--tokenizer", os.path.join(work, "ours"), "--input", enc_path,
                               "--output", os.devnull, "--threads", str(n)])
            ours.append(w)
        hf, hf_fast = [], []
        env = dict(os.environ, RAYON_NUM_THREADS=str(n), TOKENIZERS_PARALLELISM="true")
        for _ in range(args.repeat):
            _, _, out = run_rss([py, "-c", HF_ENCODE, vocab, enc_path], env=env)
            hf.append(float(out.split()[0]))
            hf_fast.append(float(out.split()[1]))
        best = min(median(hf), median(hf_fast))
        rows[f"encode_{n}t"] = {"threads": n, "ours_mb_s": enc_bytes / 1e6 / median(ours),
                                "hf_encode_batch_mb_s": enc_bytes / 1e6 / median(hf),
                                "hf_encode_batch_fast_mb_s": enc_bytes / 1e6 / median(hf_fast),
                                "hf_mb_s": enc_bytes / 1e6 / best}
    shutil.rmtree(work, ignore_errors=True)

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    result = {"device": f"{cpu}, {threads} threads", "command": " ".join([os.path.relpath(sys.argv[0], root)] + sys.argv[1:]),
              "tokenizers": tokenizers.__version__, "corpus": args.corpus, "corpus_bytes": corpus_bytes,
              "encode_bytes": enc_bytes, "vocab_size": args.vocab_size, "repeat": args.repeat,
              "peak_rss_from": "GNU time %M" if os.access(GNU_TIME, os.X_OK) else "wait4 (at least this interpreter's RSS)",
              "results": rows}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)

    t = rows["train"]
    print(f"device: {result['device']}; tokenizers {tokenizers.__version__}; corpus {corpus_bytes / 1e6:.1f} MB; "
          f"encode input {enc_bytes / 1e6:.1f} MB; median of {args.repeat}")
    print(f"{'metric':34} {'bertforge':>12} {'HF tokenizers':>14} {'ratio':>8}")
    print(f"{'train time (s)':34} {t['ours_s']:12.3f} {t['hf_s']:14.3f} {t['hf_s'] / t['ours_s']:7.1f}x")
    print(f"{'train peak RSS (MB)':34} {t['ours_peak_rss'] / 1e6:12.1f} {t['hf_peak_rss'] / 1e6:14.1f} "
          f"{t['hf_peak_rss'] / t['ours_peak_rss']:7.1f}x")
    print(f"{'  (python + tokenizers import alone)':34} {'':12} {t['python_baseline_rss'] / 1e6:14.1f}")
    if "train_big" in rows:
        b = rows["train_big"]
        print(f"{'train time, %.0f MB salted (s)' % b['mb']:34} {b['ours_s']:12.2f} {b['hf_s']:14.2f} "
              f"{b['hf_s'] / b['ours_s']:7.1f}x")
        print(f"{'train peak RSS, %.0f MB salted (MB)' % b['mb']:34} {b['ours_peak_rss'] / 1e6:12.1f} "
              f"{b['hf_peak_rss'] / 1e6:14.1f} {b['hf_peak_rss'] / b['ours_peak_rss']:7.1f}x")
    for key, r in rows.items():
        if key.startswith("encode"):
            label = f"encode MB/s, {r['threads']} thread(s) [HF best]"
            print(f"{label:34} {r['ours_mb_s']:12.1f} {r['hf_mb_s']:14.1f} {r['ours_mb_s'] / r['hf_mb_s']:7.1f}x")
    print(f"json: {args.json}")


if __name__ == "__main__":
    main()
