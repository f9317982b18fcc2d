#!/usr/bin/env python3
"""A checkpoint that bert_train wrote is a Hugging Face model, end to end through the CLIs:

  bert_tokenizer train -> bert_prepare build -> bert_train (30 steps, dropout on) -> checkpoint dir
  (1) transformers.BertForPreTraining / BertForMaskedLM.from_pretrained(dir) load it with no missing or
      unexpected weights, and BertTokenizerFast.from_pretrained(dir) its tokenizer;
  (2) pipeline("fill-mask", model=dir, top_k=5) gives the same tokens, strings and sequences as
      `bert_infer --json`, scores within rel 1e-4 (fp32 on both sides), for prompts with one and two
      [MASK]s;
  (3) a checkpoint resumed for 10 more steps is still loadable and its weights differ from the first.

    python test_trained_checkpoint.py --bin-dir build --work /tmp/x
"""
import argparse
import json
import math
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_corpus  # noqa: E402
from tiny_corpus import FAILURES, check, run  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    b = lambda name: os.path.join(args.bin_dir, name)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    w = lambda name: os.path.join(args.work, name)

    tiny_corpus.build(args.bin_dir, args.work)

    def config(name, max_steps):
        path = w(name + ".toml")
        with open(path, "w") as f:
            f.write(f"""[model]
hidden_size = 32
num_hidden_layers = 2
num_attention_heads = 2
intermediate_size = 64
max_position_embeddings = 32

[data]
tokenizer = "{w('tok')}"
train_data = "{w('shards')}"

[training]
output_dir = "{w('model')}"
max_steps = {max_steps}
per_device_train_batch_size = 16
learning_rate = 5e-3
warmup_steps = 3
logging_steps = 10
save_steps = 30
threads = 2
seed = 11
""")
        return path

    run([b("bert_train"), "--config", config("run", 30)])
    checkpoint = w("model/checkpoint-30")

    import torch
    from transformers import BertForMaskedLM, BertForPreTraining, BertTokenizerFast, pipeline

    torch.set_num_threads(2)
    model, info = BertForPreTraining.from_pretrained(checkpoint, output_loading_info=True)
    check(not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"],
          f"(1) BertForPreTraining.from_pretrained(checkpoint-30): missing {info['missing_keys']}, "
          f"unexpected {info['unexpected_keys']}, mismatched {info['mismatched_keys']}")
    mlm, info = BertForMaskedLM.from_pretrained(checkpoint, output_loading_info=True)
    # BertForMaskedLM has no pooler / NSP head: those are the only unexpected weights allowed.
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith(("bert.pooler", "cls.seq_relationship"))]
    check(not info["missing_keys"] and not unexpected,
          f"(1) BertForMaskedLM.from_pretrained(checkpoint-30): missing {info['missing_keys']}, unexpected {unexpected}")
    tokenizer = BertTokenizerFast.from_pretrained(checkpoint)
    check(len(tokenizer) == model.config.vocab_size, f"(1) tokenizer of {len(tokenizer)} tokens, config vocab "
          f"{model.config.vocab_size}")

    prompts = ["이순신은 [MASK] 중기의 무신이다.", "세종은 [MASK]을 창제하였다.", "[MASK] 대첩에서 일본 [MASK]을 크게 물리쳤다."]
    fill = pipeline("fill-mask", model=mlm, tokenizer=tokenizer, top_k=5, device="cpu")
    with open(w("prompts.txt"), "w") as f:
        f.write("\n".join(prompts) + "\n")
    ours = [json.loads(line) for line in
            run([b("bert_infer"), "--model", checkpoint, "--input", w("prompts.txt"), "--json", "--top-k", "5"])
            .splitlines() if line.strip()]
    check(len(ours) == len(prompts), f"(2) bert_infer --json: one value per prompt ({len(ours)})")
    for prompt, got in zip(prompts, ours):
        want = fill(prompt)
        if prompt.count("[MASK]") == 1:
            got, want = [got], [want]
        same, worst = len(got) == len(want), 0.0
        for g_list, w_list in zip(got, want):
            same &= len(g_list) == len(w_list)
            for g, h in zip(g_list, w_list):
                same &= g["token"] == h["token"] and g["token_str"] == h["token_str"] and g["sequence"] == h["sequence"]
                worst = max(worst, abs(g["score"] - h["score"]) / max(abs(h["score"]), 1e-12))
        check(same and worst < 1e-4, f"(2) fill-mask {prompt!r}: tokens/strings/sequences equal HF pipeline, "
              f"worst score rel diff {worst:.1e}")

    # (2b) The other way: transformers' own BertForMaskedLM.save_pretrained (no pooler, no NSP head, the
    # tied decoder dropped) with the tokenizer's save_pretrained; bert_infer serves the pipeline's answers.
    hf_dir = w("hf_mlm")
    mlm.save_pretrained(hf_dir, safe_serialization=True)
    tokenizer.save_pretrained(hf_dir)
    theirs = [json.loads(line) for line in
              run([b("bert_infer"), "--model", hf_dir, "--input", w("prompts.txt"), "--json", "--top-k", "5"])
              .splitlines() if line.strip()]
    check(theirs == ours, "(2b) bert_infer on transformers' BertForMaskedLM.save_pretrained dir: the same answers "
          "as on our checkpoint")

    # (3) resume for 10 more steps (a new max_steps): still an HF model, and it moved.
    run([b("bert_train"), "--config", config("longer", 40), "--resume", checkpoint])
    later = BertForPreTraining.from_pretrained(w("model/checkpoint-40"))
    moved = max(float((a - b_).abs().max()) for a, b_ in zip(later.parameters(), model.parameters()))
    check(math.isfinite(moved) and moved > 0, f"(3) resumed to step 40: loads, weights moved by {moved:.2e}")

    if FAILURES:
        print(f"\n{len(FAILURES)} check(s) failed")
        sys.exit(1)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
