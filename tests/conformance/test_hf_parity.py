#!/usr/bin/env python3
"""Parity of engine/bert.* with transformers' BertForPreTraining (PyTorch, Debian's python3-torch).

A tiny config (vocab 101, hidden 32, 2 layers, 4 heads, intermediate 64, 40 positions) and batches with
padding, MLM labels (-100 elsewhere) and NSP labels. Dropout is off on both sides (model.eval() /
the driver's eval mode). tests/hf_parity_driver.cpp is our side.

(1) Our initial weights (driver init) load into BertForPreTraining.from_pretrained with nothing missing
    or unexpected; loss, MLM loss and NSP loss agree (rel 1e-5) and the gradient of every parameter,
    by HF name, agrees norm-wise (||ours - hf|| / ||hf|| <= 1e-4): in float64 on both sides, and again
    in float32 on both sides.
(2) An HF-initialised model saved with save_pretrained(safe_serialization=True) loads into ours: the
    same losses (rel 1e-5) and gradients (float64).
(3) Three AdamW steps (torch.optim.AdamW, eps 1e-8, weight_decay 0.01 except biases and LayerNorm
    weights, as HF's Trainer groups them; clip_grad_norm_ 1.0) on the same batches: the per-step losses
    agree (rel 1e-5) and so does every weight afterwards (rel 1e-4), in float64 and in float32.

The attention key biases have an exactly zero gradient (softmax ignores a shift shared by all keys of
a query), which comes out as rounding noise on both sides; tensors that small are measured against
1e-6 (float64: 1e-9) of the whole model's norm instead of their own. AdamW divides by sqrt(v) + 1e-8,
so in float32 that noise (~1e-9) turns into updates of up to lr per step that differ between any two
implementations (HF float32 vs HF float64 too); after float32 training the key biases are therefore
only checked to stay within AdamW's step bound on both sides, every other weight to rel 1e-4.
Prints PASS/FAIL lines; exits non-zero on any failure. torch missing is a FAIL (scripts/setup.sh
installs python3-torch), never a skip.
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys

FAILURES = []


def check(cond, msg):
    print(("PASS " if cond else "FAIL ") + msg, flush=True)
    if not cond:
        FAILURES.append(msg)


try:
    import torch
except Exception as error:  # noqa: BLE001 - any import failure means the oracle is unusable
    print(f"FAIL torch is not importable ({type(error).__name__}: {error}); install Debian's python3-torch "
          "(scripts/setup.sh does) and run the test with the test virtualenv's python", flush=True)
    sys.exit(1)

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
try:
    import transformers
    from safetensors.torch import load_file
    from transformers import BertConfig, BertForPreTraining
    from transformers.utils import is_torch_available
    if not is_torch_available():
        raise ImportError(f"transformers {transformers.__version__} does not accept torch {torch.__version__}")
except Exception as error:  # noqa: BLE001
    print(f"FAIL transformers' BertForPreTraining is not usable ({type(error).__name__}: {error}); "
          "scripts/setup.sh installs the pinned version", flush=True)
    sys.exit(1)

CONFIG = dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=40, type_vocab_size=2, pad_token_id=0)
CLS, SEP, MASK = 2, 3, 4
LOSS_RTOL, GRAD_RTOL, WEIGHT_RTOL = 1e-5, 1e-4, 1e-4
ZERO_FLOOR = {"double": 1e-9, "float": 1e-6}  # x the whole model's norm: the scale of "exactly zero"
DTYPES = {"double": torch.float64, "float": torch.float32}


def make_batch(seed, lengths, seq_len=16):
    """[CLS] A [SEP] B [SEP] rows padded to seq_len; ~25% of the real tokens labelled for MLM."""
    rng = random.Random(seed)
    batch = {"input_ids": [], "token_type_ids": [], "attention_mask": [], "labels": [], "next_sentence_label": []}
    for length in lengths:
        a_len = (length - 3) // 2
        b_len = length - 3 - a_len
        ids = [CLS] + [rng.randrange(5, 101) for _ in range(a_len)] + [SEP] + \
              [rng.randrange(5, 101) for _ in range(b_len)] + [SEP]
        types = [0] * (a_len + 2) + [1] * (b_len + 1)
        labels = [-100] * length
        candidates = [i for i, t in enumerate(ids) if t not in (CLS, SEP)]
        for i in rng.sample(candidates, max(1, len(candidates) // 4)):
            labels[i] = ids[i]
            ids[i] = MASK if rng.random() < 0.8 else rng.randrange(5, 101)
        pad = seq_len - length
        batch["input_ids"].append(ids + [0] * pad)
        batch["token_type_ids"].append(types + [0] * pad)
        batch["attention_mask"].append([1] * length + [0] * pad)
        batch["labels"].append(labels + [-100] * pad)
        batch["next_sentence_label"].append(rng.randrange(2))
    return batch


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def driver(args, *argv):
    cmd = [args.driver, *argv]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        check(False, f"driver {' '.join(argv[:1])} failed ({result.returncode}): {result.stderr.strip()}")
        raise SystemExit(finish())
    return result


def hf_losses(model, batch):
    """outputs.loss with labels= and next_sentence_label=, and its two terms computed as HF does."""
    tensors = {k: torch.tensor(v) for k, v in batch.items()}
    out = model(input_ids=tensors["input_ids"], token_type_ids=tensors["token_type_ids"],
                attention_mask=tensors["attention_mask"], labels=tensors["labels"],
                next_sentence_label=tensors["next_sentence_label"])
    ce = torch.nn.CrossEntropyLoss()
    mlm = ce(out.prediction_logits.view(-1, model.config.vocab_size), tensors["labels"].view(-1))
    nsp = ce(out.seq_relationship_logits.view(-1, 2), tensors["next_sentence_label"].view(-1))
    return out.loss, float(mlm), float(nsp)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def compare_losses(label, ours, loss, mlm, nsp):
    errors = {"loss": rel(ours["loss"], float(loss)), "mlm_loss": rel(ours["mlm_loss"], mlm),
              "nsp_loss": rel(ours["nsp_loss"], nsp)}
    worst = max(errors.values())
    check(worst <= LOSS_RTOL,
          f"{label}: losses ours {ours['loss']:.10f} / {ours['mlm_loss']:.10f} / {ours['nsp_loss']:.10f} vs "
          f"HF {float(loss):.10f} / {mlm:.10f} / {nsp:.10f} (total / mlm / nsp), max rel error {worst:.2e}")
    return worst


def is_key_bias(name):
    return name.endswith("attention.self.key.bias")


def compare_tensors(label, ours, theirs, precision, rtol, skip=lambda name: False):
    """Norm-wise relative error per tensor by HF name; the names must match exactly. `skip`: names left
    to the caller."""
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    check(not missing and not extra, f"{label}: the same {len(theirs)} tensor names "
                                     f"(missing in ours: {missing[:5]}, only in ours: {extra[:5]})")
    total = math.sqrt(sum(float(t.double().norm()) ** 2 for t in theirs.values()))
    floor = ZERO_FLOOR[precision] * total
    worst_name, worst, floored = "", 0.0, []
    for name, want in theirs.items():
        if name not in ours or skip(name):
            continue
        got = ours[name].double()
        want = want.double()
        if tuple(got.shape) != tuple(want.shape):
            check(False, f"{label}: {name} shape {tuple(got.shape)} vs HF {tuple(want.shape)}")
            continue
        norm = float(want.norm())
        if norm < floor:
            floored.append(name)
        error = float((got - want).norm()) / max(norm, floor, 1e-300)
        if error > worst:
            worst_name, worst = name, error
    note = f"; {len(floored)} exactly-zero tensors measured against the floor" if floored else ""
    skipped = sum(1 for name in theirs if skip(name))
    note += f"; {skipped} checked separately" if skipped else ""
    check(worst <= rtol, f"{label}: max rel error {worst:.2e} ({worst_name}) over {len(theirs) - skipped} "
                         f"tensors{note}")
    return worst


def hf_grads(model):
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def adamw_for(model, lr):
    """HF Trainer's grouping: no weight decay for biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if "bias" in name or "LayerNorm" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.999), eps=1e-8)


def finish():
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed", flush=True)
        return 1
    print("all HF parity checks passed", flush=True)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", required=True, help="tests/hf_parity_driver executable")
    parser.add_argument("--work", required=True, help="scratch directory")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    summary = {}

    config = BertConfig(**CONFIG)
    batch = make_batch(1, [16, 11, 7])
    batch_path = os.path.join(args.work, "batch.json")
    write_json(batch_path, batch)

    # (1) our init -> HF, losses and gradients
    ours_dir = os.path.join(args.work, "ours_init")
    os.makedirs(ours_dir, exist_ok=True)
    config.save_pretrained(ours_dir)
    weights = os.path.join(ours_dir, "model.safetensors")
    driver(args, "init", "--config", os.path.join(ours_dir, "config.json"), "--seed", "7", "--out", weights)
    hf, info = BertForPreTraining.from_pretrained(ours_dir, output_loading_info=True)
    check(not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"],
          f"(1) our checkpoint loads into BertForPreTraining.from_pretrained (missing {info['missing_keys']}, "
          f"unexpected {info['unexpected_keys']}, mismatched {info['mismatched_keys']})")
    state = load_file(weights)
    check(torch.equal(hf.bert.embeddings.word_embeddings.weight, state["bert.embeddings.word_embeddings.weight"]) and
          hf.cls.predictions.decoder.weight.data_ptr() == hf.bert.embeddings.word_embeddings.weight.data_ptr(),
          "(1) HF holds our word embeddings exactly, with the decoder tied to them")
    for precision in ("double", "float"):
        model = BertForPreTraining.from_pretrained(ours_dir).to(DTYPES[precision])
        model.eval()
        model.zero_grad()
        loss, mlm, nsp = hf_losses(model, batch)
        loss.backward()
        grads_path = os.path.join(args.work, f"grads_{precision}.safetensors")
        losses_path = os.path.join(args.work, f"losses_{precision}.json")
        driver(args, "grads", "--weights", weights, "--batch", batch_path, "--out", grads_path, "--losses",
               losses_path, "--precision", precision)
        summary[f"(1) loss {precision}"] = compare_losses(f"(1) our init, {precision}", read_json(losses_path), loss,
                                                          mlm, nsp)
        summary[f"(1) grads {precision}"] = compare_tensors(f"(1) our init, {precision}: gradients",
                                                            load_file(grads_path), hf_grads(model), precision,
                                                            GRAD_RTOL)

    # (2) HF init -> ours
    hf_dir = os.path.join(args.work, "hf_init")
    torch.manual_seed(1234)
    hf_model = BertForPreTraining(config)
    hf_model.save_pretrained(hf_dir, safe_serialization=True)
    hf_weights = os.path.join(hf_dir, "model.safetensors")
    for precision in ("double", "float"):
        model = BertForPreTraining.from_pretrained(hf_dir).to(DTYPES[precision])
        model.eval()
        model.zero_grad()
        loss, mlm, nsp = hf_losses(model, batch)
        loss.backward()
        losses_path = os.path.join(args.work, f"hf_init_losses_{precision}.json")
        driver(args, "forward", "--weights", hf_weights, "--batch", batch_path, "--losses", losses_path,
               "--precision", precision)
        summary[f"(2) loss {precision}"] = compare_losses(f"(2) HF init -> ours, {precision} forward",
                                                          read_json(losses_path), loss, mlm, nsp)
        if precision == "double":
            grads_path = os.path.join(args.work, "hf_init_grads_double.safetensors")
            driver(args, "grads", "--weights", hf_weights, "--batch", batch_path, "--out", grads_path, "--losses",
                   losses_path, "--precision", precision)
            summary["(2) grads double"] = compare_tensors("(2) HF init -> ours, double: gradients",
                                                          load_file(grads_path), hf_grads(model), precision,
                                                          GRAD_RTOL)

    # (3) AdamW steps from our init on both sides
    steps, lr, max_grad_norm = 3, 1e-3, 1.0
    batch_paths, train_batches = [], []
    for i, lengths in enumerate(([16, 11, 7], [9, 16, 12, 5], [14, 8])):
        b = make_batch(100 + i, lengths)
        path = os.path.join(args.work, f"train_batch_{i}.json")
        write_json(path, b)
        batch_paths.append(path)
        train_batches.append(b)
    for precision in ("double", "float"):
        model = BertForPreTraining.from_pretrained(ours_dir).to(DTYPES[precision])
        model.eval()
        optimizer = adamw_for(model, lr)
        hf_steps = []
        for step in range(steps):
            optimizer.zero_grad()
            loss, mlm, nsp = hf_losses(model, train_batches[step % len(train_batches)])
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            hf_steps.append((loss.detach(), mlm, nsp, float(norm)))
        final_path = os.path.join(args.work, f"trained_{precision}.safetensors")
        log_path = os.path.join(args.work, f"train_log_{precision}.json")
        driver(args, "train", "--weights", weights, "--config", os.path.join(ours_dir, "config.json"), "--batches",
               *batch_paths, "--steps", str(steps), "--lr", str(lr), "--weight-decay", "0.01", "--max-grad-norm",
               str(max_grad_norm), "--precision", precision, "--out", final_path, "--losses", log_path)
        log = read_json(log_path)["steps"]
        worst_loss = 0.0
        for step, (ours_step, (loss, mlm, nsp, norm)) in enumerate(zip(log, hf_steps)):
            worst_loss = max(worst_loss, compare_losses(f"(3) {precision} step {step + 1}", ours_step, loss, mlm, nsp))
            check(rel(ours_step["grad_norm"], norm) <= GRAD_RTOL,
                  f"(3) {precision} step {step + 1}: grad norm ours {ours_step['grad_norm']:.10f} vs HF {norm:.10f}")
        summary[f"(3) loss {precision}"] = worst_loss
        trained = {name: p.detach() for name, p in model.named_parameters()}
        ours_trained = load_file(final_path)
        noisy = is_key_bias if precision == "float" else (lambda name: False)
        summary[f"(3) weights {precision}"] = compare_tensors(
            f"(3) {precision}: weights after {steps} AdamW steps", ours_trained, trained, precision, WEIGHT_RTOL,
            noisy)
        if precision == "float":
            bound = 2 * steps * lr  # |AdamW step| <= lr * |m_hat| / sqrt(v_hat) <~ lr per step (zero init)
            largest = max(max(float(t[name].abs().max()) for t in (ours_trained, trained))
                          for name in trained if is_key_bias(name))
            check(largest <= bound, "(3) float: attention key biases (zero gradient, Adam-amplified rounding) stay "
                                    f"within AdamW's step bound on both sides: max |w| {largest:.2e} <= {bound:.0e}")

    print("max rel errors: " + ", ".join(f"{k} {v:.2e}" for k, v in summary.items()), flush=True)
    return finish()


if __name__ == "__main__":
    sys.exit(main())
