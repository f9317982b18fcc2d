#!/usr/bin/env python3
"""A checkpoint that bert_train wrote is a Hugging Face model, end to end through the CLIs:

  bert_tokenizer train -> bert_prepare build -> bert_train (30 steps, dropout on) -> checkpoint dir
  (1) transformers.BertForPreTraining / BertForMaskedLM.from_pretrained(dir) load it with no missing or
      unexpected weights, and BertTokenizerFast.from_pretrained(dir) its tokenizer;
  (2) pipeline("fill-mask", model=dir, top_k=5) gives the same tokens, strings and sequences as
      `bert_infer --json`, scores within rel 1e-4 (fp32 on both sides), for prompts with one and two
      [MASK]s; and with targets= (--targets);
      a model saved by transformers with untied output embeddings is refused, not served tied;
      (2d) what transformers loads its own way, bert_infer serves the same: no tokenizer_config.json
      (BertTokenizer's defaults), the mask token named in special_tokens_map.json only, config.json
      keys left out (HF's defaults), pad_token_id null, hidden_act "gelu_pytorch_tanh"; and
      is_decoder = true (causal attention) is refused;
  (3) a checkpoint resumed for 10 more steps is still loadable and its weights differ from the first;
  (4) `bert_infer --exposure` scores texts by the pseudo-log-likelihood transformers computes (abs 2e-4
      nats), and its rank, exposure and gaussian exposure follow from those scores.
  (5) `[model] model_name_or_path` starts a run from the weights of a BertForMaskedLM transformers saved
      (the pooler and NSP head fresh), or of a BertModel (the heads fresh);
  (6) ... and with a [data] tokenizer that appends tokens to that model's vocabulary, the embeddings
      grow as transformers' resize_token_embeddings grows them (mean_resizing: new rows at the mean,
      within its 1e-9-covariance noise; decoder bias 0).

    python test_trained_checkpoint.py --bin-dir build --work /tmp/x
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_corpus  # noqa: E402
from tiny_corpus import FAILURES, check, run  # noqa: E402


def same_answers(prompt, got, want):
    """bert_infer's JSON for one prompt against the pipeline's: (same tokens, strings and sequences in the
    same order, worst relative score difference)."""
    if prompt.count("[MASK]") == 1:
        got, want = [got], [want]
    same, worst = len(got) == len(want), 0.0
    for g_list, w_list in zip(got, want):
        same &= len(g_list) == len(w_list)
        for g, h in zip(g_list, w_list):
            same &= g["token"] == h["token"] and g["token_str"] == h["token_str"] and g["sequence"] == h["sequence"]
            worst = max(worst, abs(g["score"] - h["score"]) / max(abs(h["score"]), 1e-12))
    return same, worst


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
        same, worst = same_answers(prompt, got, fill(prompt))
        check(same and worst < 1e-4, f"(2) fill-mask {prompt!r}: tokens/strings/sequences equal HF pipeline, "
              f"worst score rel diff {worst:.1e}")

    # (2e) targets=: candidates restricted to the given tokens, scores still over the whole vocabulary.
    # Vocabulary entries (a "##" piece and [MASK] among them), a word with no entry (its first piece),
    # a cased spelling of an entry, a duplicate and a blank target (ignored), at a top_k below and above
    # their number, for one and two [MASK]s.
    vocab_of = tokenizer.get_vocab()
    ranked = [tokenizer.convert_ids_to_tokens(c["token"]) for c in fill(prompts[0], top_k=12)]
    piece = next(t for t in sorted(vocab_of) if t.startswith("##"))
    word = next(t for t in sorted(vocab_of, key=len, reverse=True) if not t.startswith("[") and not t.startswith("##"))
    # (An entry with letters that have case, written in upper case: the lowercasing tokenizer's first
    # token is the entry itself.)
    cased = next((t.upper() for t in sorted(vocab_of) if t.upper() != t and not t.startswith(("[", "##"))), "Seoul")
    targets = [ranked[7], ranked[2], piece, "[MASK]", word + piece[2:], cased, ranked[7], " ", ranked[11]]
    missing = sum(1 for t in targets if t not in vocab_of)
    for prompt in (prompts[0], prompts[2]):
        for k in (3, 20):
            result = subprocess.run([b("bert_infer"), "--model", checkpoint, "--mask", prompt, "--json", "--top-k",
                                     str(k), "--targets", *targets], capture_output=True, text=True)
            if result.returncode != 0:
                check(False, f"(2e) targets: bert_infer failed: {result.stderr.strip()}")
                continue
            same, worst = same_answers(prompt, json.loads(result.stdout), fill(prompt, top_k=k, targets=targets))
            notes = result.stderr.count("note: --targets: ")
            check(same and worst < 1e-4 and notes == missing,
                  f"(2e) fill-mask {prompt!r} top_k={k} targets={targets!r}: equals the pipeline's (worst score rel "
                  f"diff {worst:.1e}; {notes} notes for {missing} targets not in the vocabulary)")

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

    # (2c) A model saved with its own output layer (tie_word_embeddings=False, the decoder changed):
    # refused by name, not served with the word embeddings in the decoder's place.
    untied = BertForMaskedLM.from_pretrained(checkpoint, tie_word_embeddings=False)
    with torch.no_grad():
        untied.cls.predictions.decoder.weight.mul_(1.5)
    untied_dir = w("hf_untied")
    untied.save_pretrained(untied_dir, safe_serialization=True)
    tokenizer.save_pretrained(untied_dir)
    refused = subprocess.run([b("bert_infer"), "--model", untied_dir, "--mask", prompts[0]],
                             capture_output=True, text=True)
    check(refused.returncode != 0 and "tie_word_embeddings = false: only tied output embeddings" in refused.stderr,
          f"(2c) bert_infer on an untied BertForMaskedLM: refused ({refused.returncode}: {refused.stderr.strip()})")

    # (2d) Directories transformers loads its own way. Each is hf_mlm changed in one respect; bert_infer's
    # answers must be the pipeline's on the same directory. tokenizer.json (which transformers prefers
    # to vocab.txt) is left out, but for the case that keeps it alone.
    def variant(name, edit):
        d = w(name)
        shutil.copytree(hf_dir, d)
        if os.path.exists(os.path.join(d, "tokenizer.json")):
            os.remove(os.path.join(d, "tokenizer.json"))
        edit(d)
        return d

    def edit_json(path, change):
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
        change(j)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f)

    def same_as_pipeline(d, texts, label):
        model_d = BertForMaskedLM.from_pretrained(d).eval()
        tok_d = BertTokenizerFast.from_pretrained(d)
        fill_d = pipeline("fill-mask", model=model_d, tokenizer=tok_d, top_k=5, device="cpu")
        with open(w(label + ".txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(texts) + "\n")
        result = subprocess.run([b("bert_infer"), "--model", d, "--input", w(label + ".txt"), "--json", "--top-k", "5"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            check(False, f"(2d) {label}: bert_infer failed: {result.stderr.strip()}")
            return result
        got_all = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        same, worst = len(got_all) == len(texts), 0.0
        for text, got in zip(texts, got_all):
            want = fill_d(text)
            for g, h in zip(got, want):
                same &= g["token"] == h["token"] and g["token_str"] == h["token_str"] and g["sequence"] == h["sequence"]
                worst = max(worst, abs(g["score"] - h["score"]) / max(abs(h["score"]), 1e-12))
        check(same and worst < 1e-4, f"(2d) {label}: bert_infer equals the pipeline (worst score rel diff {worst:.1e})")
        return result

    # No tokenizer_config.json: BertTokenizer's defaults (lowercase, accents stripped), with a note.
    bare = variant("hf_no_tokenizer_config", lambda d: os.remove(os.path.join(d, "tokenizer_config.json")))
    result = same_as_pipeline(bare, prompts[:2] + ["Seoul [MASK] 2024."], "no_tokenizer_config")
    check("has no tokenizer_config.json: BertTokenizer's defaults apply" in result.stderr,
          f"(2d) no tokenizer_config.json: a note says which defaults apply ({result.stderr.strip()!r})")

    # tokenizer.json without vocab.txt (save_pretrained(legacy_format=False) writes no vocab.txt).
    def json_only(d):
        shutil.copy(os.path.join(hf_dir, "tokenizer.json"), d)
        os.remove(os.path.join(d, "vocab.txt"))
    check(os.path.exists(os.path.join(hf_dir, "tokenizer.json")), "(2d) save_pretrained wrote a tokenizer.json")
    same_as_pipeline(variant("hf_tokenizer_json", json_only), prompts[:2], "tokenizer_json_only")
    # Read from tokenizer.json, transformers' clean_up_tokenization_spaces defaults to false (true from
    # vocab.txt); the decoder decides the rest: none joins the tokens by spaces ("##" kept), and
    # "cleanup": false keeps " ." in each token (the only clean-up this vocabulary can show: "." is its
    # one punctuation token), which clean_up_tokenization_spaces then may or may not remove.
    punctuated = ["이순신은 [MASK] 중기의 무신이었다 .", "세종은 훈민정음을 [MASK] .", "[MASK] . 한산도 대첩에서"]
    def json_decoder_keeps(clean_up):
        def edit(d):
            json_only(d)
            edit_json(os.path.join(d, "tokenizer.json"), lambda j: j["decoder"].__setitem__("cleanup", False))
            edit_json(os.path.join(d, "tokenizer_config.json"), lambda j: j.pop("clean_up_tokenization_spaces", None)
                      if clean_up is None else j.__setitem__("clean_up_tokenization_spaces", clean_up))
        return edit
    same_as_pipeline(variant("hf_json_default_cleanup", json_decoder_keeps(None)), punctuated, "json_default_cleanup")
    same_as_pipeline(variant("hf_json_cleanup_true", json_decoder_keeps(True)), punctuated, "json_cleanup_true")
    def json_no_decoder(d):
        json_only(d)
        edit_json(os.path.join(d, "tokenizer.json"), lambda j: j.__setitem__("decoder", None))
    same_as_pipeline(variant("hf_json_no_decoder", json_no_decoder), punctuated, "json_no_decoder")
    # A token added to the tokenizer after the model was made (the embeddings not resized): transformers
    # loads the directory and answers prompts without it, read from tokenizer.json or from vocab.txt.
    def added_not_resized(keep_json):
        def edit(d):
            t = BertTokenizerFast.from_pretrained(hf_dir)
            t.add_tokens(["법률가"])
            t.save_pretrained(d)
            if not keep_json:
                os.remove(os.path.join(d, "tokenizer.json"))
        return edit
    same_as_pipeline(variant("hf_added_json", added_not_resized(True)), prompts[:2], "added_json")
    same_as_pipeline(variant("hf_added_txt", added_not_resized(False)), prompts[:2], "added_txt")

    # The mask token renamed in vocab.txt and named by special_tokens_map.json alone.
    def renamed_mask(d):
        vocab_path = os.path.join(d, "vocab.txt")
        with open(vocab_path, encoding="utf-8") as f:
            text = f.read()
        with open(vocab_path, "w", encoding="utf-8") as f:
            f.write(text.replace("[MASK]\n", "<mask>\n"))
        edit_json(os.path.join(d, "tokenizer_config.json"), lambda j: [j.pop(k, None) for k in
                                                                        ("mask_token", "added_tokens_decoder")])
        edit_json(os.path.join(d, "special_tokens_map.json"), lambda j: j.__setitem__("mask_token", "<mask>"))
    same_as_pipeline(variant("hf_mask_in_map", renamed_mask), [p.replace("[MASK]", "<mask>") for p in prompts[:2]],
                     "mask_in_special_tokens_map")

    # config.json: size keys left out (HF's defaults), pad_token_id null, gelu_pytorch_tanh (the tanh GELU:
    # a different model, so only the two implementations agreeing counts).
    def config_edits(d):
        edit_json(os.path.join(d, "config.json"), lambda j: (j.pop("type_vocab_size"), j.pop("layer_norm_eps"),
                                                            j.update(pad_token_id=None, hidden_act="gelu_pytorch_tanh")))
    same_as_pipeline(variant("hf_config_defaults", config_edits), prompts[:2], "config_defaults")

    decoder = variant("hf_decoder", lambda d: edit_json(os.path.join(d, "config.json"),
                                                       lambda j: j.update(is_decoder=True)))
    refused = subprocess.run([b("bert_infer"), "--model", decoder, "--mask", prompts[0]], capture_output=True, text=True)
    check(refused.returncode != 0 and "is_decoder = true: only encoder models are supported" in refused.stderr,
          f"(2d) is_decoder = true: refused ({refused.returncode}: {refused.stderr.strip()})")

    # (3) resume for 10 more steps (a new max_steps): still an HF model, and it moved.
    run([b("bert_train"), "--config", config("longer", 40), "--resume", checkpoint])
    later = BertForPreTraining.from_pretrained(w("model/checkpoint-40"))
    moved = max(float((a - b_).abs().max()) for a, b_ in zip(later.parameters(), model.parameters()))
    check(math.isfinite(moved) and moved > 0, f"(3) resumed to step 40: loads, weights moved by {moved:.2e}")

    # (4) bert_infer --exposure scores a text by its pseudo-log-likelihood as transformers computes it
    # (each token masked in turn, log-softmax, summed), and ranks it as the candidates' scores say. The
    # tiny corpus has no digits, so the model is transformers' own: a random BertForMaskedLM (peaked
    # predictions) over the trained vocabulary plus digits, saved with save_pretrained.
    from transformers import BertConfig
    digits_dir = w("hf_digits")
    os.makedirs(digits_dir)
    with open(os.path.join(checkpoint, "vocab.txt"), encoding="utf-8") as f:
        vocab = [t for t in f.read().split("\n") if t]
    vocab += list("0123456789") + ["##" + d for d in "0123456789"]
    with open(os.path.join(digits_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(checkpoint, name)):
            shutil.copy(os.path.join(checkpoint, name), digits_dir)
    torch.manual_seed(5)
    random_mlm = BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
                                            initializer_range=0.3)).eval()
    random_mlm.save_pretrained(digits_dir, safe_serialization=True)
    digits_tok = BertTokenizerFast.from_pretrained(digits_dir)

    def pseudo_log_likelihood(text):
        ids = digits_tok(text)["input_ids"]
        copies = torch.tensor([ids] * (len(ids) - 2))
        for i in range(1, len(ids) - 1):
            copies[i - 1, i] = digits_tok.mask_token_id
        with torch.no_grad():
            log_p = torch.log_softmax(random_mlm(input_ids=copies).logits.double(), dim=-1)
        return sum(float(log_p[i - 1, i, ids[i]]) for i in range(1, len(ids) - 1))

    canaries = [("이순신은 조선 중기의 무신이다 010-1234-5678", "010-1234-5678", "phone"),
                ("세종은 1443 년에 훈민정음을 창제하였다.", "1443", "year")]
    with open(w("canaries.tsv"), "w", encoding="utf-8") as f:
        f.write("".join(f"{t}\t{s}\t{label}\n" for t, s, label in canaries))
    report = json.loads(run([b("bert_infer"), "--model", digits_dir, "--exposure", w("canaries.tsv"),
                             "--candidates", "40", "--seed", "3", "--json", "--scores", w("scores.tsv")]))
    scored = {}
    with open(w("scores.tsv"), encoding="utf-8") as f:
        for row in f.read().splitlines()[1:]:
            line, secret, score, _ = row.split("\t")
            scored.setdefault(int(line), []).append((secret, float(score)))
    for (text, secret, label), item in zip(canaries, report["canaries"]):
        rows = scored[item["line"]]
        theirs = [pseudo_log_likelihood(text.replace(secret, candidate)) for candidate, _ in rows]
        worst = max(abs(ours - hf) for (_, ours), hf in zip(rows, theirs))
        spread = max(theirs) - min(theirs)
        check(len(rows) == 41 and rows[0][0] == secret and worst < 2e-4 and spread > 0.1,
              f"(4) exposure {label}: the pseudo-log-likelihoods of the canary and its 40 candidates equal "
              f"transformers' (worst abs diff {worst:.1e} nats, spread {spread:.2f})")
        # The rank from transformers' scores, with ties closer than the tolerance either way.
        lo = 1 + sum(hf >= theirs[0] + 2e-4 for hf in theirs[1:])
        hi = 1 + sum(hf >= theirs[0] - 2e-4 for hf in theirs[1:])
        mine = [score for _, score in rows[1:]]
        mean = sum(mine) / len(mine)
        stddev = math.sqrt(sum((x - mean) ** 2 for x in mine) / (len(mine) - 1))
        gaussian = -math.log2(0.5 * math.erfc((rows[0][1] - mean) / stddev / math.sqrt(2)))
        check(lo <= item["rank"] <= hi and item["population"] == 41
              and abs(item["exposure"] - math.log2(41 / item["rank"])) < 1e-8  # JSON numbers: 9 digits
              and abs(item["candidate_mean"] - mean) < 1e-8 * abs(mean)
              and abs(item["candidate_stddev"] - stddev) < 1e-8 * stddev
              and abs(item["gaussian_exposure"] - gaussian) < 1e-6 * max(1.0, gaussian),
              f"(4) exposure {label}: rank {item['rank']} of 41 (transformers: {lo}..{hi}), exposure "
              f"{item['exposure']:.3f} bits, gaussian {item['gaussian_exposure']:.3f} bits (python: {gaussian:.3f})")

    # (5) [model] model_name_or_path: a run starts from the weights of a model transformers saved, a
    # BertForMaskedLM (no pooler, no NSP head), under transformers' own tensor names.
    pretrained_dir = w("hf_pretrained")
    os.makedirs(pretrained_dir)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(checkpoint, name)):
            shutil.copy(os.path.join(checkpoint, name), pretrained_dir)
    torch.manual_seed(6)
    hf_pretrained = BertForMaskedLM(BertConfig(vocab_size=model.config.vocab_size, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=32))
    hf_pretrained.save_pretrained(pretrained_dir, safe_serialization=True)
    with open(w("from_hf.toml"), "w") as f:
        f.write(f"""[model]
model_name_or_path = "{pretrained_dir}"
attention_probs_dropout_prob = 0.0

[data]
tokenizer = "{w('tok')}"
train_data = "{w('shards')}"

[training]
output_dir = "{w('from_hf')}"
max_steps = 1
per_device_train_batch_size = 4
threads = 2
""")
    started = run([b("bert_train"), "--config", w("from_hf.toml"), "--dump-batches", w("from_hf_dump")])
    init = BertForPreTraining.from_pretrained(w("from_hf_dump/init"))
    theirs, ours = hf_pretrained.state_dict(), init.state_dict()
    differ = [k for k, v in theirs.items() if k not in ours or not torch.equal(v, ours[k])]
    heads = [k for k in ours if k.startswith(("bert.pooler.", "cls.seq_relationship.")) and k.endswith("weight")]
    check(not differ and len(heads) == 2 and all(float(ours[k].abs().max()) > 0 for k in heads)
          and "newly initialised, as it has none: bert.pooler.dense.weight" in started
          and init.config.attention_probs_dropout_prob == 0.0 and init.config.hidden_size == 32,
          f"(5) model_name_or_path = a BertForMaskedLM transformers saved: its {len(theirs)} tensors are the "
          f"starting weights (differing: {differ}), the pooler and NSP head start fresh, the config is its own")

    def start_from(model_dir, name):
        """bert_train from_hf.toml's run with model_name_or_path = model_dir: its output and starting weights."""
        with open(w("from_hf.toml")) as f:
            text = f.read().replace(pretrained_dir, model_dir).replace(w("from_hf"), w(name))
        with open(w(name + ".toml"), "w") as f:
            f.write(text)
        out = run([b("bert_train"), "--config", w(name + ".toml"), "--dump-batches", w(name + "_dump")])
        return out, BertForPreTraining.from_pretrained(w(name + "_dump/init")).state_dict()

    # ... and from a BertModel (no "bert." prefix, no heads but the pooler), as from_pretrained loads one.
    from transformers import BertModel
    base_dir = w("hf_base")
    shutil.copytree(pretrained_dir, base_dir, ignore=shutil.ignore_patterns("model.safetensors", "config.json"))
    torch.manual_seed(7)
    hf_base = BertModel(hf_pretrained.config)
    hf_base.save_pretrained(base_dir, safe_serialization=True)
    started, ours = start_from(base_dir, "from_base")
    theirs = hf_base.state_dict()
    differ = [k for k, v in theirs.items() if "bert." + k not in ours or not torch.equal(v, ours["bert." + k])]
    check(not differ and len(theirs) > 20 and "newly initialised, as it has none: cls.predictions.bias" in started,
          f"(5) model_name_or_path = a BertModel transformers saved: its {len(theirs)} tensors are the starting "
          f"weights under bert. (differing: {differ}), the MLM and NSP heads start fresh")
    # bert_infer refuses it: transformers would fill masks with a random MLM head (and a warning).
    refused = subprocess.run([b("bert_infer"), "--model", base_dir, "--mask", prompts[0]], capture_output=True, text=True)
    check(refused.returncode != 0 and "a BertModel checkpoint (transformers' base model" in refused.stderr,
          f"(5) bert_infer --model <a BertModel>: refused ({refused.returncode}: {refused.stderr.strip()})")

    # (6) [data] tokenizer = that model's vocabulary with tokens appended: a model 3 tokens short.
    import inspect
    small_dir = w("hf_small")
    shutil.copytree(pretrained_dir, small_dir, ignore=shutil.ignore_patterns("model.safetensors", "config.json"))
    with open(os.path.join(pretrained_dir, "vocab.txt"), encoding="utf-8") as f:
        tokens = f.read().splitlines()
    grown = len(tokens)
    with open(os.path.join(small_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(tokens[:-3]) + "\n")
    torch.manual_seed(8)
    small_config = BertConfig(**{**hf_pretrained.config.to_dict(), "vocab_size": grown - 3})
    hf_small = BertForMaskedLM(small_config)
    hf_small.save_pretrained(small_dir, safe_serialization=True)
    started, ours = start_from(small_dir, "from_small")
    if "mean_resizing" in inspect.signature(hf_small.resize_token_embeddings).parameters:
        hf_small.resize_token_embeddings(grown)  # mean_resizing=True: transformers >= 4.46's default
        theirs = hf_small.state_dict()
        embeddings = "bert.embeddings.word_embeddings.weight"
        new_rows = (ours[embeddings][-3:] - theirs[embeddings][-3:]).abs().max().item()
        tied = (embeddings, "cls.predictions.decoder.weight")  # one tensor
        differ = [k for k, v in theirs.items() if k in ours and k not in tied and not torch.equal(v, ours[k])]
        check(not differ and torch.equal(ours[embeddings][:-3], theirs[embeddings][:-3]) and new_rows < 1e-5
              and float(ours["cls.predictions.bias"][-3:].abs().max()) == 0.0
              and ours[embeddings].shape[0] == grown and "vocabulary grown by 3 tokens" in started,
              f"(6) model_name_or_path with 3 tokens appended by [data] tokenizer: the embeddings grow as "
              f"resize_token_embeddings({grown}) grows them (new rows within {new_rows:.1e} of its, differing "
              f"otherwise: {differ})")
    else:
        print("skipped: (6) this transformers' resize_token_embeddings has no mean_resizing (< 4.46)")

    if FAILURES:
        print(f"\n{len(FAILURES)} check(s) failed")
        sys.exit(1)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
