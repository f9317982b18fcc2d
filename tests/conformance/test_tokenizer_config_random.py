#!/usr/bin/env python3
"""Random tokenizer directories (vocab.txt + tokenizer_config.json, sometimes special_tokens_map.json)
read by bert_tokenizer and by transformers' BertTokenizerFast.from_pretrained, ids compared.

Each config draws do_lower_case, strip_accents and tokenize_chinese_chars (or leaves them to the
defaults), special tokens as strings or AddedToken dicts (other contents, flags), bos_token,
additional_special_tokens, added_tokens_decoder entries (ids inside and past vocab.txt, consistent or
not), sometimes an added_tokens.json ({"token": id}: transformers' legacy file, which it reads without
added_tokens_decoder) and model_max_length. Lines with case, accents, CJK, zero-width characters and special tokens
inside words are encoded with the specials added:
  - both read the directory: the same ids on every line;
  - transformers refuses it: so do we;
  - we refuse what transformers reads only for the reasons the README gives, by name: special tokens
    matched in normalised text (normalized = true) or as whole words (single_word), an
    added_tokens_decoder or added_tokens.json that disagrees with vocab.txt (a token at another id,
    or an id leaving a gap, in vocab.txt's or tokenizer.json's ids), a special token in added_tokens.json
    that transformers' legacy path does not see as one (it then matches it in normalised text too), an
    id added_tokens.json gives twice, the legacy path's slip (a special token field renamed to
    added_tokens.json's last token), a tokenizer.json post-processor adding other tokens than the
    config's [CLS] and [SEP], and a [CLS] or [SEP] that vocab.txt lacks when the specials are added (a model could not
    embed it).
(tokenizer_config.json's clean_text, which BertTokenizerFast ignores and bert_tokenizer honours for
its own tokenizers, is not drawn.) Prints PASS/FAIL lines; exits non-zero on any failure.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from tokenizers import BertWordPieceTokenizer  # noqa: E402
from transformers import BertTokenizerFast  # noqa: E402

FAILURES = []

# Why we may refuse a directory transformers reads (tokenizer/tokenizer.cpp's messages).
DOCUMENTED = ("has normalized = true: only tokens matched as written are supported",
              "has single_word = true: only tokens matched as written are supported",
              "a special token with normalized = true (matched in the normalised text) is not supported",
              "single_word = true (a match only as a whole word) is not supported",
              "has it as id", "nor the next id after it",
              "--add-special-tokens needs it", "--add-special-tokens needs them",
              "is a special token that transformers' legacy path reads as a normalised added token",
              "is given twice", "a slip of transformers", "post_processor: adds")


def check(cond, msg):
    print(("PASS " if cond else "FAIL ") + msg, flush=True)
    if not cond:
        FAILURES.append(msg)


BASE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "##a", "##b", "ab", "[", "]", "<", ">", "x",
              "##x", "é", "e", "##e", "한", "##국", "國", "<s>", "</s>", "<unk>", "M", "##A", "##S", "##K", "mask",
              "Ab", "AB", "##\u0301", ".", ","]
LINES = ["a b ab", "A B AB Ab", "é É e\u0301", "한국 國家", "[MASK] a", "[mask] <s> </s>", "a[MASK]b", "<unk> x",
         "a\u200bb", "  ", "ab<x>ab <x>", "Hello [SEP] a", "[CLS][PAD]", "xab ABx", "AB.ab,a", "[NEW]ab [NEW]"]


def token_value(r, default):
    k = r.random()
    if k < 0.5:
        return default
    if k < 0.7:
        return r.choice(["<unk>", "<s>", "</s>", "[UNK]", "[MASK]", "mask", "<x>", "[NEW]"])
    return {"__type": "AddedToken", "content": r.choice([default, "<x>", "[NEW]"]), "lstrip": r.random() < 0.2,
            "rstrip": r.random() < 0.2, "normalized": r.random() < 0.3, "single_word": r.random() < 0.1,
            "special": r.random() < 0.8}


def config(r):
    cfg = {}
    for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars"):
        if r.random() < 0.6:
            cfg[key] = r.choice([True, False, None] if key == "strip_accents" else [True, False])
    for key, default in (("unk_token", "[UNK]"), ("sep_token", "[SEP]"), ("pad_token", "[PAD]"),
                         ("cls_token", "[CLS]"), ("mask_token", "[MASK]")):
        if r.random() < 0.3:
            cfg[key] = token_value(r, default)
    if r.random() < 0.2:
        cfg["bos_token"] = token_value(r, "<s>")
    if r.random() < 0.2:
        cfg["additional_special_tokens"] = r.sample(["<x>", "[NEW]", "ab", "Ab", "x", "<s>"], r.randint(0, 3))
    if r.random() < 0.3:
        decoder = {}
        for _ in range(r.randint(1, 3)):
            at = r.choice([0, 1, 4, 9, len(BASE_VOCAB), len(BASE_VOCAB) + 1])
            decoder[str(at)] = {"content": r.choice(["<x>", "[NEW]", "ab", "[PAD]", "[UNK]", "[MASK]", "AB"]),
                                "lstrip": False, "rstrip": False, "normalized": r.random() < 0.3,
                                "single_word": False, "special": r.random() < 0.7}
        cfg["added_tokens_decoder"] = decoder
    if r.random() < 0.2:
        cfg["model_max_length"] = r.choice([8, 512, 1000000000000000019884624838656])
    return cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="bert_tokenizer")
    ap.add_argument("--work", required=True)
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--seed", type=int, default=20261207)
    args = ap.parse_args()
    r = random.Random(args.seed)
    os.makedirs(args.work, exist_ok=True)
    lines_path = os.path.join(args.work, "lines.txt")
    with open(lines_path, "w", encoding="utf-8") as f:
        f.write("\n".join(LINES) + "\n")
    counts = {"same ids": 0, "both refuse": 0, "we refuse, documented": 0, "added_tokens.json read": 0,
              "with tokenizer.json": 0}
    shown = 0
    for i in range(args.count):
        d = os.path.join(args.work, f"dir{i}")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        with open(os.path.join(d, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(BASE_VOCAB) + "\n")
        cfg = config(r)
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, ensure_ascii=False)
        if r.random() < 0.3:
            special_map = {}
            if r.random() < 0.7:
                special_map["mask_token"] = r.choice(["[MASK]", "<x>", "mask"])
            if r.random() < 0.5:
                special_map["additional_special_tokens"] = r.sample(["<x>", "[NEW]", "<y>", "zz"], r.randint(1, 2))
            with open(os.path.join(d, "special_tokens_map.json"), "w", encoding="utf-8") as f:
                json.dump(special_map, f)
        if r.random() < 0.3:  # read only without added_tokens_decoder (transformers' legacy path)
            legacy = {}  # mostly consistent ids: vocab.txt's, or the next ones after it
            for content in r.sample(["<x>", "[NEW]", "ab", "[PAD]", "[MASK]", "AB", "<s>", "zz", "mask"],
                                    r.randint(1, 3)):
                fresh = len(BASE_VOCAB) + sum(t not in BASE_VOCAB for t in legacy)
                legacy[content] = (BASE_VOCAB.index(content) if content in BASE_VOCAB else fresh) \
                    if r.random() < 0.8 else r.choice([0, 4, 9, len(BASE_VOCAB) + 2])
            with open(os.path.join(d, "added_tokens.json"), "w", encoding="utf-8") as f:
                json.dump(legacy, f)
            cfg["(added_tokens.json)"] = legacy  # (shown with a failure; not in the file)
            # and a tokenizer.json (for the legacy path, with the default [UNK]), whose added tokens replace
            # added_tokens.json's at their ids
            if "added_tokens_decoder" not in cfg and "unk_token" not in cfg and r.random() < 0.4:
                fast = BertWordPieceTokenizer(os.path.join(d, "vocab.txt"),
                                              lowercase=cfg.get("do_lower_case", True) is not False)
                fast.add_special_tokens(r.sample(["[MASK]", "<x>", "[NEW]"], r.randint(0, 2)))
                fast.save(os.path.join(d, "tokenizer.json"))
                cfg["(tokenizer.json)"] = True
        try:
            theirs = BertTokenizerFast.from_pretrained(d)(LINES, add_special_tokens=True)["input_ids"]
        except Exception as e:  # whatever transformers raises for a directory it cannot read
            theirs = e
        run = subprocess.run([args.bin, "encode", "--tokenizer", d, "--input", lines_path, "--add-special-tokens"],
                             capture_output=True, text=True)
        problem = None
        legacy_file = os.path.exists(os.path.join(d, "added_tokens.json"))
        counts["added_tokens.json read"] += legacy_file and "added_tokens_decoder" not in cfg and run.returncode == 0
        counts["with tokenizer.json"] += "(tokenizer.json)" in cfg and run.returncode == 0
        if run.returncode != 0:
            message = run.stderr.strip()
            if len(message.split("\n")) != 1 or not message.startswith("error: " + d):
                problem = f"our refusal is not one line naming the directory: {message[:300]}"
            elif isinstance(theirs, Exception):
                counts["both refuse"] += 1
            elif any(reason in message for reason in DOCUMENTED):
                counts["we refuse, documented"] += 1
            else:
                problem = f"we refuse what transformers reads: {message[:300]}"
        elif isinstance(theirs, Exception):
            problem = f"we read what transformers refuses ({theirs!r:.200})"
        else:
            ours = [[int(x) for x in row.split()] for row in run.stdout.split("\n")[:-1]]
            bad = [k for k in range(len(LINES)) if k >= len(ours) or ours[k] != theirs[k]]
            if bad:
                k = bad[0]
                problem = (f"other ids on {LINES[k]!r}: ours {ours[k] if k < len(ours) else None}, "
                           f"transformers {theirs[k]}")
            else:
                counts["same ids"] += 1
        if problem:
            FAILURES.append(problem)
            if shown < 20:
                shown += 1
                print(f"FAIL dir{i} {json.dumps(cfg, ensure_ascii=False)[:400]}: {problem}", flush=True)
    check(not FAILURES, f"{args.count} random tokenizer directories: ours and BertTokenizerFast agree")
    print(f"  {counts}")
    check(counts["same ids"] > args.count // 4 and counts["both refuse"] > 0 and
          counts["added_tokens.json read"] > args.count // 40 and counts["with tokenizer.json"] > 0,
          f"both read most: {counts}")
    print(f"\n{'FAILED' if FAILURES else 'OK'}: {len(FAILURES)} failure(s)")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
