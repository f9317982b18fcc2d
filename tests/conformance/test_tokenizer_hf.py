#!/usr/bin/env python3
"""Conformance of bert_tokenizer against the real Hugging Face `tokenizers` / `transformers`.

(a) encode: on a vocab we trained, on one HF trained and on one of every character (its ids spell
    out the normalised text), our ids equal BertWordPieceTokenizer's on every one of >20,000 lines
    (Korean corpus lines plus generated Hanja, emoji, control and zero-width characters, long words,
    punctuation runs, runs of combining marks, random code points), with several normaliser
    settings; pairs + truncation + specials equal BertTokenizerFast.from_pretrained(ours).
(b) train: same corpus and settings -> the same token set as HF up to HF's own tie-order
    nondeterminism (which we measure here by training HF twice); the deterministic part of the
    vocabulary (specials, alphabet, ##-forms) must be identical; < 0.5% difference overall.
(c) directories: hand-made ones (specials vocab.txt lacks, added_tokens_decoder, bos/eos) and
    tokenizer.json ones (alone, with added tokens, its normaliser overridden by the config) give
    BertTokenizerFast.from_pretrained's ids; a tokenizer.json with any key left out or null is
    refused wherever `tokenizers` (which transformers reads it with) refuses it.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from textgen import conformance_lines  # noqa: E402

import tokenizers  # noqa: E402
from tokenizers import BertWordPieceTokenizer  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FAILURES = []


def check(cond, msg):
    print(("PASS " if cond else "FAIL ") + msg, flush=True)
    if not cond:
        FAILURES.append(msg)


def default_corpus():
    cache = os.environ.get("BERT_CACHE", os.path.expanduser("~/.cache/bertforge"))
    return os.path.join(cache, "demo", "ko_corpus.txt")


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\n".join(lines) + "\n")


def tokenizer_dir(work, name, vocab, lowercase, strip_accents, clean_text=True, chinese=True):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    shutil.copy(vocab, os.path.join(d, "vocab.txt"))
    cfg = {"do_lower_case": lowercase, "strip_accents": strip_accents, "tokenize_chinese_chars": chinese,
           "clean_text": clean_text, "model_max_length": 512, "unk_token": "[UNK]", "sep_token": "[SEP]",
           "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f)
    return d


def our_encode(binary, tok_dir, input_path, extra=()):
    out = subprocess.run([binary, "encode", "--tokenizer", tok_dir, "--input", input_path, "--threads", "2", *extra],
                         check=True, capture_output=True, text=True).stdout
    rows = out.split("\n")
    assert rows[-1] == ""
    return rows[:-1]


def compare_ids(label, ours_rows, hf_ids, lines):
    check(len(ours_rows) == len(hf_ids), f"{label}: {len(ours_rows)} output lines for {len(hf_ids)} input lines")
    bad = []
    for i, (row, ids) in enumerate(zip(ours_rows, hf_ids)):
        mine = [int(x) for x in row.split()] if row else []
        if mine != ids:
            bad.append((i, mine, ids))
    for i, mine, ids in bad[:5]:
        print(f"   line {i + 1}: {lines[i]!r}\n     ours {mine[:40]}\n     hf   {ids[:40]}")
    check(not bad, f"{label}: ids identical to HF on {len(hf_ids)} lines ({len(bad)} differ)")


def hf_train(corpus, out_dir, vocab_size, min_frequency):
    t = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
    t.train([corpus], vocab_size=vocab_size, min_frequency=min_frequency, limit_alphabet=10 ** 9,
            special_tokens=SPECIALS, show_progress=False)
    os.makedirs(out_dir, exist_ok=True)
    t.save_model(out_dir)
    return os.path.join(out_dir, "vocab.txt")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--corpus", default=os.environ.get("BERT_DEMO_CORPUS", default_corpus()))
    ap.add_argument("--vocab-size", type=int, default=8000)
    args = ap.parse_args()
    if not os.path.exists(args.corpus):
        sys.exit(f"error: demo corpus {args.corpus} not found; build it with scripts/build_demo_corpus.sh")
    print(f"tokenizers {tokenizers.__version__}; corpus {args.corpus}")
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)

    # ---- (b) training -------------------------------------------------------------------------
    ours_dir = os.path.join(args.work, "ours")
    subprocess.run([args.bin, "train", "--input", args.corpus, "--out", ours_dir, "--vocab-size",
                    str(args.vocab_size), "--min-frequency", "2", "--quiet"], check=True)
    ours_again = os.path.join(args.work, "ours_again")
    subprocess.run([args.bin, "train", "--input", args.corpus, "--out", ours_again, "--vocab-size",
                    str(args.vocab_size), "--min-frequency", "2", "--quiet", "--threads", "1"], check=True)
    ours_vocab = os.path.join(ours_dir, "vocab.txt")
    check(open(ours_vocab, "rb").read() == open(os.path.join(ours_again, "vocab.txt"), "rb").read(),
          "training is deterministic (2 threads vs 1 thread: vocab.txt byte-identical)")
    hf_vocab = hf_train(args.corpus, os.path.join(args.work, "hf"), args.vocab_size, 2)
    hf_vocab2 = hf_train(args.corpus, os.path.join(args.work, "hf2"), args.vocab_size, 2)
    ours_tokens = read_lines(ours_vocab)[:-1]
    hf_tokens = read_lines(hf_vocab)[:-1]
    hf2_tokens = read_lines(hf_vocab2)[:-1]
    check(len(ours_tokens) == len(hf_tokens), f"vocab sizes equal ({len(ours_tokens)} vs HF {len(hf_tokens)})")
    check(ours_tokens[:5] == SPECIALS, "special tokens first, in order")
    # The part before any merge is deterministic in HF except for the order of the ##-forms.
    n_alpha = next(i for i, t in enumerate(hf_tokens) if t.startswith("##"))
    check(ours_tokens[:n_alpha] == hf_tokens[:n_alpha], f"specials + alphabet identical, same ids ({n_alpha} tokens)")
    hf_cont = {t for t in hf_tokens if t.startswith("##") and len(t[2:]) == 1}
    ours_cont = {t for t in ours_tokens if t.startswith("##") and len(t[2:]) == 1}
    check(ours_cont == hf_cont, f"##-continuation forms identical ({len(ours_cont)})")
    diff = set(ours_tokens) ^ set(hf_tokens)
    hf_self = set(hf_tokens) ^ set(hf2_tokens)
    frac = len(set(ours_tokens) - set(hf_tokens)) / len(hf_tokens)
    print(f"   token-set difference ours vs HF: {len(diff) // 2} tokens ({100 * frac:.2f}%); "
          f"HF vs HF (second run, tie order): {len(hf_self) // 2} tokens")
    check(frac < 0.005, "token set within 0.5% of HF's")

    # ---- (a) encoding -------------------------------------------------------------------------
    lines = conformance_lines(read_lines(args.corpus))
    check(len(lines) >= 20000, f"{len(lines)} conformance lines")
    input_path = os.path.join(args.work, "lines.txt")
    write_lines(input_path, lines)
    settings = [  # (name, lowercase, strip_accents, clean_text, chinese)
        ("cased", False, False, True, True),
        ("lowercase+strip", True, True, True, True),
        ("lowercase only", True, False, True, True),
        ("strip only", False, True, True, True),
        ("no clean_text, no chinese", False, False, False, False),
    ]
    # A vocabulary of every character the normaliser can produce on these lines (and its ##-form):
    # words become one id per character, so the ids show the normalised text itself, e.g. the order
    # strip_accents leaves combining marks in (a trained vocabulary has few marks and the words
    # holding them are [UNK] whatever their order).
    from tokenizers.normalizers import BertNormalizer
    chars = set()
    for _, lower, strip, clean, chinese in settings:
        normalizer = BertNormalizer(clean_text=clean, handle_chinese_chars=chinese, strip_accents=strip,
                                    lowercase=lower)
        chars.update(c for line in lines for c in normalizer.normalize_str(line) if not c.isspace())
    chars = sorted(chars - set("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"))
    char_vocab = os.path.join(args.work, "char_vocab.txt")
    write_lines(char_vocab, SPECIALS + chars + ["##" + c for c in chars])
    for vocab_name, vocab in (("our vocab", ours_vocab), ("HF vocab", hf_vocab), ("character vocab", char_vocab)):
        for name, lower, strip, clean, chinese in settings:
            if vocab_name == "HF vocab" and name not in ("cased", "lowercase+strip"):
                continue
            d = tokenizer_dir(args.work, f"{vocab_name}-{name}".replace(" ", "_"), vocab, lower, strip, clean, chinese)
            hf = BertWordPieceTokenizer(vocab, clean_text=clean, handle_chinese_chars=chinese, strip_accents=strip,
                                        lowercase=lower)
            hf_ids = [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)]
            compare_ids(f"{vocab_name}, {name}", our_encode(args.bin, d, input_path), hf_ids, lines)

    # ---- BertTokenizerFast.from_pretrained on the directory we wrote ----------------------------
    from transformers import BertTokenizerFast
    fast = BertTokenizerFast.from_pretrained(ours_dir)
    check(fast.convert_tokens_to_ids("[MASK]") == 4 and not fast.do_lower_case,
          "BertTokenizerFast.from_pretrained(our dir) loads with our settings")
    sample = lines[:3000]
    hf_single = fast(sample, add_special_tokens=True)["input_ids"]
    single_path = os.path.join(args.work, "single.txt")
    write_lines(single_path, sample)
    compare_ids("from_pretrained, single + specials",
                our_encode(args.bin, ours_dir, single_path, ["--add-special-tokens"]), hf_single, sample)
    pairs_a, pairs_b = lines[0:4000:2], lines[1:4000:2]
    pairs_a = [a.replace("\t", " ") for a in pairs_a]
    pairs_b = [b.replace("\t", " ") for b in pairs_b]
    pair_path = os.path.join(args.work, "pairs.txt")
    write_lines(pair_path, [a + "\t" + b for a, b in zip(pairs_a, pairs_b)])
    for max_len in (16, 64):
        enc = fast(pairs_a, pairs_b, add_special_tokens=True, truncation="longest_first", max_length=max_len)
        rows = our_encode(args.bin, ours_dir, pair_path,
                          ["--pair", "--add-special-tokens", "--max-length", str(max_len), "--format", "jsonl"])
        mismatch = 0
        for i, row in enumerate(rows):
            r = json.loads(row)
            if r["ids"] != enc["input_ids"][i] or r["type_ids"] != enc["token_type_ids"][i]:
                if mismatch < 3:
                    print(f"   pair {i}: ours {r['ids']} hf {enc['input_ids'][i]}")
                mismatch += 1
        check(len(rows) == len(pairs_a) and mismatch == 0,
              f"pairs + specials + longest_first max_length={max_len}: ids and type ids equal ({mismatch} differ)")

    # ---- hand-made directories: what BertTokenizerFast adds to vocab.txt ---------------------------
    # Special tokens vocab.txt lacks are appended after its last id (unk, sep, pad, cls, mask, then the
    # additional ones); added_tokens_decoder's tokens are split out as special tokens.
    small = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "##a", "##b", "ab", "[", "]", "M", "##A", "##S", "##K",
             "<", ">", "x", "##x", "e", "##t", "##r", "<x>"]
    hand_lines = ["a <extra> b [MASK] ab", "[MASK]<extra>ab", "a<x>b <x> [ MASK ]", "ab abb [MASK][MASK]", "",
                  "a [MASK] <s> b</s>", "XR xr Xr"]
    hand_path = os.path.join(args.work, "hand.txt")
    write_lines(hand_path, hand_lines)
    cases = {
        "appended specials": {"do_lower_case": False, "additional_special_tokens": ["<extra>"]},
        "bos and eos": {"do_lower_case": False, "bos_token": "<s>", "eos_token": "</s>"},
        # An appended special matches the raw text only: "XR", lowercased, is x ##r, not the token.
        "appended special as a word": {"do_lower_case": True, "additional_special_tokens": ["xr"]},
        "added_tokens_decoder": {"do_lower_case": False, "added_tokens_decoder": {
            "22": {"content": "<x>", "special": True, "normalized": False, "lstrip": False, "rstrip": False,
                   "single_word": False}}},
    }
    for label, cfg in cases.items():
        d = os.path.join(args.work, "hand_" + label.replace(" ", "_"))
        os.makedirs(d, exist_ok=True)
        write_lines(os.path.join(d, "vocab.txt"), small)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(cfg, f)
        hand_fast = BertTokenizerFast.from_pretrained(d)
        compare_ids(f"hand-made dir, {label}", our_encode(args.bin, d, hand_path, ["--add-special-tokens"]),
                    hand_fast(hand_lines, add_special_tokens=True)["input_ids"], hand_lines)

    # ---- tokenizer.json directories: transformers reads it instead of vocab.txt -------------------
    # Written by save_pretrained(legacy_format=False) (tokenizer.json alone) and by tokenizers'
    # BertWordPieceTokenizer.save; BertTokenizerFast takes do_lower_case, strip_accents and
    # tokenize_chinese_chars from tokenizer_config.json (or its defaults: lowercase), clean_text from
    # tokenizer.json. Added tokens past the vocabulary keep their ids.
    json_cases = []
    d = os.path.join(args.work, "json_legacy_false")
    fast.save_pretrained(d, legacy_format=False)
    json_cases.append(("save_pretrained(legacy_format=False)", d))
    for label, lower, clean, config in (("json cased, no config (do_lower_case default)", False, True, None),
                                        ("json lowercase, config cased", True, True, {"do_lower_case": False}),
                                        ("json clean_text false", False, False, {"do_lower_case": False})):
        d = os.path.join(args.work, "json_" + str(len(json_cases)))
        os.makedirs(d, exist_ok=True)
        wp = BertWordPieceTokenizer(ours_vocab, clean_text=clean, lowercase=lower, strip_accents=False)
        wp.add_special_tokens(["[RRN]", "[PHONE]"])
        wp.save(os.path.join(d, "tokenizer.json"))
        if config is not None:
            with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
                json.dump(config, f)
        json_cases.append((label, d))
    json_sample = sample[:1500] + ["연락처 [PHONE] 와 [RRN]", "A[RRN]b [MASK] Ärger"]
    json_path = os.path.join(args.work, "json_lines.txt")
    write_lines(json_path, json_sample)
    for label, d in json_cases:
        check(not os.path.exists(os.path.join(d, "vocab.txt")), f"{label}: the directory has no vocab.txt")
        hf_json = BertTokenizerFast.from_pretrained(d)
        compare_ids(f"tokenizer.json dir, {label}", our_encode(args.bin, d, json_path, ["--add-special-tokens"]),
                    hf_json(json_sample, add_special_tokens=True)["input_ids"], json_sample)
    # A vocab.txt that disagrees with tokenizer.json, and a pipeline that is not BERT's: refused by name.
    d = json_cases[1][1]
    write_lines(os.path.join(d, "vocab.txt"), read_lines(ours_vocab)[:-1][::-1])
    r = subprocess.run([args.bin, "encode", "--tokenizer", d, "--input", json_path], capture_output=True, text=True)
    check(r.returncode != 0 and "vocab.txt: differs from tokenizer.json at id 0" in r.stderr,
          f"a vocab.txt that disagrees with tokenizer.json is refused: {r.stderr.strip()[:200]}")
    os.remove(os.path.join(d, "vocab.txt"))
    with open(os.path.join(d, "tokenizer.json")) as f:
        spec = json.load(f)
    spec["post_processor"] = {"type": "RobertaProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2],
                              "trim_offsets": True, "add_prefix_space": False}
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(spec, f)
    r = subprocess.run([args.bin, "encode", "--tokenizer", d, "--input", json_path], capture_output=True, text=True)
    check(r.returncode != 0 and "tokenizer.json: post_processor: 'RobertaProcessing'" in r.stderr,
          f"a post_processor other than BERT's is refused: {r.stderr.strip()[:200]}")

    # Every key of save_pretrained's tokenizer.json (and each section's keys) left out, or null:
    # tokenizers.Tokenizer.from_str is the oracle (transformers cannot load what it refuses). What it
    # refuses we refuse, naming the key; what it accepts we read, except where it would give another
    # pipeline than BERT's (no normalizer, pre_tokenizer or post_processor) or guess a section's
    # missing "type" from its other keys: those we refuse by name, and exactly those.
    with open(os.path.join(json_cases[0][1], "tokenizer.json"), encoding="utf-8") as f:
        padded = tokenizers.Tokenizer.from_str(f.read())
    padded.enable_padding(pad_id=0, pad_token="[PAD]")  # so that padding's keys are tried too
    full = json.loads(padded.to_str())
    check(full["truncation"] is not None and full["padding"] is not None,
          "tokenizer.json keys: the file has truncation and padding to try")
    d = os.path.join(args.work, "json_keys")
    os.makedirs(d, exist_ok=True)
    ours_only = {f"{section} {op}" for section in ("normalizer", "pre_tokenizer", "post_processor")
                 for op in ("left out", "null")}
    ours_only |= {f"{section}.type {op}" for section in ("normalizer", "post_processor", "decoder", "model")
                  for op in ("left out", "null")}
    mutations = []
    for key, value in full.items():
        mutations += [((key,), "left out"), ((key,), "null")]
        if isinstance(value, dict):
            mutations += [((key, inner), op) for inner in value for op in ("left out", "null")]
    # And values of the right JSON type that tokenizers may or may not take.
    mutations += [(("version",), "2.0"), (("truncation",), 5), (("truncation", "strategy"), "OnlyFirst"),
                  (("truncation", "strategy"), "Longest"), (("truncation", "direction"), "Up"),
                  (("truncation", "max_length"), -1), (("truncation", "stride"), "0"),
                  (("padding", "strategy"), {"Fixed": 8}), (("padding", "strategy"), "Fixed"),
                  (("padding", "direction"), "Left"), (("padding", "pad_to_multiple_of"), 8),
                  (("padding", "pad_id"), -1), (("padding", "pad_token"), 0), (("added_tokens",), {}),
                  (("normalizer", "strip_accents"), "yes"), (("decoder", "cleanup"), 1)]
    refusals = 0
    for path, op in mutations:
        spec = json.loads(json.dumps(full))
        parent = spec
        for key in path[:-1]:
            parent = parent[key]
        if op == "left out":
            del parent[path[-1]]
        else:
            parent[path[-1]] = None if op == "null" else op
        text = json.dumps(spec, ensure_ascii=False)
        try:
            tokenizers.Tokenizer.from_str(text)
            theirs = True
        except Exception:  # tokenizers raises a plain Exception for a file it cannot read
            theirs = False
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(text)
        r = subprocess.run([args.bin, "encode", "--tokenizer", d, "--input", json_path], capture_output=True,
                           text=True)
        label = f"{'.'.join(path)} {op if op in ('left out', 'null') else '= ' + json.dumps(op)}"
        named = f"tokenizer.json: {'.'.join(path)}" in r.stderr or f"tokenizer.json: {path[0]}" in r.stderr
        if theirs and label not in ours_only:
            check(r.returncode == 0, f"tokenizer.json with {label}: tokenizers reads it, and so do we "
                                     f"({r.stderr.strip()[:200]})")
        else:
            refusals += 1
            check(r.returncode != 0 and named and len(r.stderr.strip().split("\n")) == 1,
                  f"tokenizer.json with {label}: refused in one line naming it "
                  f"({'tokenizers refuses it too' if not theirs else 'tokenizers reads it'}): {r.stderr.strip()[:200]}")
    check(len(mutations) > 70 and refusals >= 40, f"tokenizer.json keys: {len(mutations)} files, {refusals} refused")

    # ---- added tokens as tokenizer.add_tokens makes them ------------------------------------------
    # Not special: normalized (matched in the normalised text as their normalised form, inside words
    # too) or not (matched in the raw text); a special one; some already in the vocabulary. Read from
    # save_pretrained's directory (tokenizer.json) and from the same without tokenizer.json (vocab.txt
    # + added_tokens_decoder, what our checkpoints carry).
    from collections import Counter
    from tokenizers import AddedToken
    words = Counter(w for line in sample for w in line.split())
    common = [w for w, _ in words.most_common(300) if len(w) >= 3][:6]
    added_lines = sample[:1500] + ["Hello HELLO hello법률가HELLO", "Ärger ärger ÄRGER arger", "RAW토큰 raw토큰 [법] [법]x",
                                   "법률가는 이순신장군 " + " ".join(common), " ".join(w.upper() for w in common)]
    added_path = os.path.join(args.work, "added_lines.txt")
    write_lines(added_path, added_lines)
    for label, lower in (("cased", False), ("lowercase", True)):
        t = BertTokenizerFast.from_pretrained(ours_dir, do_lower_case=lower)
        t.add_tokens(["법률가", "Hello", "Ärger", AddedToken("RAW토큰", normalized=False), "이순신"] +
                     [w[:2] for w in common[:3]] + [AddedToken(common[3], normalized=False), common[4]])
        t.add_tokens([AddedToken("[법]", special=True, normalized=False)], special_tokens=True)
        d = os.path.join(args.work, f"added_{label}")
        t.save_pretrained(d)
        expect = t(added_lines, add_special_tokens=True)["input_ids"]
        compare_ids(f"added tokens ({label}), save_pretrained's dir",
                    our_encode(args.bin, d, added_path, ["--add-special-tokens"]), expect, added_lines)
        os.remove(os.path.join(d, "tokenizer.json"))
        check(BertTokenizerFast.from_pretrained(d)(added_lines, add_special_tokens=True)["input_ids"] == expect,
              f"added tokens ({label}): transformers reads the directory without tokenizer.json alike")
        compare_ids(f"added tokens ({label}), vocab.txt + added_tokens_decoder",
                    our_encode(args.bin, d, added_path, ["--add-special-tokens"]), expect, added_lines)

    # tokenizer.json's normalizer lowercasing and stripping accents (Hangul to jamo) where
    # tokenizer_config.json says do_lower_case and strip_accents false: BertTokenizerFast made the added tokens' patterns
    # with the first and normalises text with the second. Tokens whose form both give are matched alike;
    # one they disagree on ("법률가": jamo against syllables) transformers never matches, and we refuse.
    mixed_lines = sample[:500] + ["abc ABC Abc xabcx", "xyz12 XYZ12", "법률가 법률가는"]
    mixed_path = os.path.join(args.work, "mixed_lines.txt")
    write_lines(mixed_path, mixed_lines)
    for label, tokens in (("agreeing", ["abc", "xyz12"]), ("disagreeing", ["abc", "법률가"])):
        t = BertTokenizerFast.from_pretrained(ours_dir, do_lower_case=True, strip_accents=True)
        t.add_tokens(tokens)
        d = os.path.join(args.work, f"mixed_{label}")
        t.save_pretrained(d)
        with open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        cfg["do_lower_case"] = False
        cfg["strip_accents"] = False
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, ensure_ascii=False)
        with open(os.path.join(d, "tokenizer.json"), encoding="utf-8") as f:
            normalizer = json.load(f)["normalizer"]
        check(normalizer["lowercase"] is True and normalizer["strip_accents"] is True,
              f"mixed normalizers ({label}): tokenizer.json lowercases and strips accents ({normalizer})")
        hf = BertTokenizerFast.from_pretrained(d)
        expect = hf(mixed_lines, add_special_tokens=False)["input_ids"]
        if label == "agreeing":
            compare_ids("mixed normalizers, added tokens both normalise alike",
                        our_encode(args.bin, d, mixed_path), expect, mixed_lines)
        else:
            added_id = hf.convert_tokens_to_ids("법률가")
            check(all(added_id not in ids for ids in expect),
                  "mixed normalizers: transformers never matches '법률가' (its pattern is in jamo)")
            r = subprocess.run([args.bin, "encode", "--tokenizer", d, "--input", mixed_path],
                               capture_output=True, text=True)
            check(r.returncode != 0 and "tokenizer.json's normalizer makes it" in r.stderr
                  and "'법률가'" in r.stderr, f"mixed normalizers: a token they disagree on is refused: "
                  f"{r.stderr.strip()[:300]}")

    print(f"\n{'FAILED' if FAILURES else 'OK'}: {len(FAILURES)} failure(s)")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
