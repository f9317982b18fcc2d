#!/usr/bin/env python3
"""Plain-Python port of Hugging Face `TextDatasetForNextSentencePrediction` (the seed notebook's NSP
data step), used as the peer in bench/bench_prepare.py. The transformers class needs torch (not
installed here), so the algorithm is ported line for line from the installed copy
(transformers 4.46.3, transformers/data/datasets/language_modeling.py):

  * the file is read with readline(); each line is strip()ped; an empty line starts a new document
    (only when the current one is non-empty); every line is tokenised with `tokenizer.tokenize` +
    `convert_tokens_to_ids` and appended to the current document when it yields any ids;
  * `create_examples_from_document` per document, with the module-level `random` generator:
    max_num_tokens = block_size - num_special_tokens_to_add(pair=True); target_seq_length is drawn
    ONCE per document (randint(2, max) with short_seq_probability) and, unlike Google's original,
    not redrawn after each chunk; a_end = randint(1, len(chunk) - 1); random next with
    nsp_probability (or when the chunk has one segment), a random document with up to 10 retries to
    avoid the same one, a random start sentence, filled to target_b_length, unused segments put back;
  * NO truncate_seq_pair: the installed version does not call it (HF issue #12188), so examples can
    be longer than block_size; the port keeps that and counts the overflowing examples;
  * examples are {input_ids, token_type_ids, next_sentence_label} built with
    build_inputs_with_special_tokens / create_token_type_ids_from_sequences, stored as int64 numpy
    arrays (stand-in for torch.tensor(dtype=torch.long)), and pickled to the cache file with
    pickle.HIGHEST_PROTOCOL, as the class does on its first run. (FileLock / cache lookup are left out.)

Checked against the real class (transformers 4.46.3 with a torch installed, random.seed(42), the demo corpus,
a 16k bertforge vocab): both modes give the same 9597 examples, input_ids / token_type_ids / labels identical.

Two tokenisation modes, same algorithm afterwards:
  perline  transformers.BertTokenizerFast.from_pretrained(DIR), one tokenize() call per line (seed style)
  batch    tokenizers.BertWordPieceTokenizer(vocab).encode_batch over all stripped lines at once
           (multi-threaded Rust; RAYON_NUM_THREADS), [CLS] A [SEP] B [SEP] built inline

Prints one JSON line: timings (tokenise / examples / pickle / total, from opening the file to the
pickle written; interpreter start, imports and tokenizer load are measured apart) and output stats.
"""
import argparse
import json
import os
import pickle
import random
import sys
import time


def read_documents_perline(path, tokenizer):
    documents = [[]]
    with open(path, encoding="utf-8") as f:
        while True:
            line = f.readline()
            if not line:
                break
            line = line.strip()
            # Empty lines are used as document delimiters
            if not line and len(documents[-1]) != 0:
                documents.append([])
            tokens = tokenizer.tokenize(line)
            tokens = tokenizer.convert_tokens_to_ids(tokens)
            if tokens:
                documents[-1].append(tokens)
    return documents


def read_documents_batch(path, tokenizer):
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    encodings = tokenizer.encode_batch(lines, add_special_tokens=False)
    documents = [[]]
    for line, enc in zip(lines, encodings):
        if not line and len(documents[-1]) != 0:
            documents.append([])
        tokens = enc.ids
        if tokens:
            documents[-1].append(tokens)
    return documents


def create_examples_from_document(examples, documents, document, doc_index, block_size, num_special_pair,
                                  build_inputs, token_types, short_seq_probability, nsp_probability, to_tensor):
    """Creates examples for a single document (HF create_examples_from_document, unchanged logic)."""
    max_num_tokens = block_size - num_special_pair

    target_seq_length = max_num_tokens
    if random.random() < short_seq_probability:
        target_seq_length = random.randint(2, max_num_tokens)

    current_chunk = []  # a buffer stored current working segments
    current_length = 0
    i = 0

    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = random.randint(1, len(current_chunk) - 1)

                tokens_a = []
                for j in range(a_end):
                    tokens_a.extend(current_chunk[j])

                tokens_b = []

                if len(current_chunk) == 1 or random.random() < nsp_probability:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)

                    for _ in range(10):
                        random_document_index = random.randint(0, len(documents) - 1)
                        if random_document_index != doc_index:
                            break

                    random_document = documents[random_document_index]
                    random_start = random.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    # We didn't actually use these segments so we "put them back"
                    num_unused_segments = len(current_chunk) - a_end
                    i -= num_unused_segments
                else:
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])

                if not (len(tokens_a) >= 1):
                    raise ValueError(f"Length of sequence a is {len(tokens_a)} which must be no less than 1")
                if not (len(tokens_b) >= 1):
                    raise ValueError(f"Length of sequence b is {len(tokens_b)} which must be no less than 1")

                input_ids = build_inputs(tokens_a, tokens_b)
                token_type_ids = token_types(tokens_a, tokens_b)

                example = {
                    "input_ids": to_tensor(input_ids),
                    "token_type_ids": to_tensor(token_type_ids),
                    "next_sentence_label": to_tensor(1 if is_random_next else 0),
                }
                examples.append(example)

            current_chunk = []
            current_length = 0

        i += 1


def load_tokenizer(mode, tok_dir):
    if mode == "perline":
        from transformers import BertTokenizerFast
        tok = BertTokenizerFast.from_pretrained(tok_dir)
        return (tok, tok.num_special_tokens_to_add(pair=True), tok.build_inputs_with_special_tokens,
                tok.create_token_type_ids_from_sequences)
    from tokenizers import BertWordPieceTokenizer
    tok = BertWordPieceTokenizer(os.path.join(tok_dir, "vocab.txt"), clean_text=True, handle_chinese_chars=True,
                                 strip_accents=False, lowercase=False)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")

    def build_inputs(a, b):
        return [cls] + a + [sep] + b + [sep]

    def token_types(a, b):
        return (len(a) + 2) * [0] + (len(b) + 1) * [1]

    return tok, tok.num_special_tokens_to_add(True), build_inputs, token_types


def main():
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["perline", "batch"], required=True)
    ap.add_argument("--tokenizer", required=True, help="tokenizer directory (vocab.txt + configs)")
    ap.add_argument("--input", help="one sentence a line, blank line between documents (omit: load only)")
    ap.add_argument("--out", help="pickle cache file to write")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--short-seq-probability", type=float, default=0.1)
    ap.add_argument("--nsp-probability", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    import numpy as np

    def to_tensor(x):
        return np.array(x, dtype=np.int64)

    tok, num_special_pair, build_inputs, token_types = load_tokenizer(args.mode, args.tokenizer)
    t_loaded = time.perf_counter()
    if not args.input:
        print(json.dumps({"load_s": t_loaded - t_start}))
        return
    random.seed(args.seed)

    t0 = time.perf_counter()
    if args.mode == "perline":
        documents = read_documents_perline(args.input, tok)
    else:
        documents = read_documents_batch(args.input, tok)
    t1 = time.perf_counter()
    examples = []
    for doc_index, document in enumerate(documents):
        create_examples_from_document(examples, documents, document, doc_index, args.block_size, num_special_pair,
                                      build_inputs, token_types, args.short_seq_probability, args.nsp_probability,
                                      to_tensor)
    t2 = time.perf_counter()
    with open(args.out or os.devnull, "wb") as handle:
        pickle.dump(examples, handle, protocol=pickle.HIGHEST_PROTOCOL)
    t3 = time.perf_counter()

    lengths = [len(e["input_ids"]) for e in examples]
    print(json.dumps({
        "startup_and_load_s": t_loaded - t_start, "tokenize_s": t1 - t0, "examples_s": t2 - t1,
        "pickle_s": t3 - t2, "total_s": t3 - t0,
        "documents": len(documents), "sentences": sum(len(d) for d in documents),
        "examples": len(examples), "tokens": sum(lengths),
        "random_next": sum(int(e["next_sentence_label"]) for e in examples) / max(1, len(examples)),
        "max_len": max(lengths, default=0), "over_block_size": sum(n > args.block_size for n in lengths),
        "num_special_pair": num_special_pair,
        "output_bytes": os.path.getsize(args.out) if args.out else 0,
    }))


if __name__ == "__main__":
    sys.exit(main())
