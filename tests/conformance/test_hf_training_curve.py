#!/usr/bin/env python3
"""bert_train's loss curve equals Hugging Face's on the same run: same initial weights, same
micro-batches, same AdamW, schedule and clipping.

  bert_tokenizer train -> bert_prepare build -> bert_train --dump-batches DIR (40 steps, 2 micro-batches
  each, dropout 0, weight decay 0.01, warmup 4 + linear decay, clip 1.0, a log line per step)
  -> transformers.BertForPreTraining.from_pretrained(DIR/init), trained with torch.optim.AdamW on HF
     Trainer's decay groups, get_linear_schedule_with_warmup and clip_grad_norm_, on DIR/batches.bin,
     each micro-batch's loss divided by the accumulation steps (HF Trainer's recipe).

Checked, per optimizer step, against metrics.jsonl's "loss" (the mean of the step's micro-batch losses):
  --device cpu  (the suite): ours fp32 vs HF fp32: every step within rel 1e-5 (measured: ~1e-7 over
                40 steps). Both sides compute the same functions in the same precision, so the curves
                stay together to rounding; a wrong schedule step, decay group, clip, bias correction or
                loss scaling moves them apart by far more within a few steps (checked below: HF with
                its warmup one step longer drifts from itself by ~1e-2).
  --device cuda (the GPU machine, scripts/gpu_check.sh): ours bf16 vs HF fp32 on the GPU: every step
                within rel 5%, the mean of the last 5 steps within 2% (issue: "final loss within 2%").
  --device cuda --train-bin build/tests/bert_train_emulated --hf-device cpu  (the suite, emulated/
                hf_training_curve_cuda): the same checks on bert_train built on the CUDA emulation (its ops
                round to bf16 where the real kernels write bf16) against HF fp32 on torch's CPU, so the
                GPU run's path through this script, and its tolerances against bf16 rounding, are
                proven before a GPU runs it.
Prints ok/FAIL lines; exits non-zero on any failure. torch or transformers missing is a FAIL.

    python test_hf_training_curve.py --bin-dir build --work /tmp/curve [--device cuda]
"""
import argparse
import json
import os
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_corpus  # noqa: E402
from tiny_corpus import FAILURES, check, run  # noqa: E402


STEPS, ACCUMULATION, BATCH, LR, WARMUP, WEIGHT_DECAY, MAX_GRAD_NORM = 40, 2, 8, 2e-3, 4, 0.01, 1.0


def read_batches(path):
    """engine/trainer.cpp dump_batch records: int32 batch, seq, then input_ids, token_type_ids,
    attention_mask, labels [batch, seq] and nsp_labels [batch]."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"BFBATCH1":
        sys.exit(f"{path}: not a bert_train batch dump")
    batches, offset = [], 8
    while offset < len(data):
        b, s = struct.unpack_from("<ii", data, offset)
        offset += 8
        arrays = []
        for count in (b * s, b * s, b * s, b * s, b):
            arrays.append(list(struct.unpack_from(f"<{count}i", data, offset)))
            offset += 4 * count
        batches.append((b, s, arrays))
    return batches


def hf_losses(torch, transformers, init_dir, batches, device, schedule_shift=0):
    """Per-step mean micro-batch loss of HF BertForPreTraining trained on `batches`."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
    from hf_bench_common import hf_decay_groups

    torch.manual_seed(0)
    model = transformers.BertForPreTraining.from_pretrained(init_dir, torch_dtype=torch.float32).to(device)
    model.train()  # dropout 0 in the config: deterministic
    optimizer = torch.optim.AdamW(hf_decay_groups(torch, model, WEIGHT_DECAY), lr=LR, betas=(0.9, 0.999), eps=1e-8)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, WARMUP + schedule_shift, STEPS)
    losses = []
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(ACCUMULATION):
            b, s, (ids, types, mask, labels, nsp) = batches[step * ACCUMULATION + micro]
            tensor = lambda values, shape: torch.tensor(values, dtype=torch.long, device=device).view(*shape)
            out = model(input_ids=tensor(ids, (b, s)), token_type_ids=tensor(types, (b, s)),
                        attention_mask=tensor(mask, (b, s)), labels=tensor(labels, (b, s)),
                        next_sentence_label=tensor(nsp, (b,)))
            (out.loss / ACCUMULATION).backward()
            total += out.loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        losses.append(total / ACCUMULATION)
    return losses


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="bert_train's [training] device")
    ap.add_argument("--train-bin", help="the bert_train to run (default: BIN_DIR/bert_train)")
    ap.add_argument("--hf-device", choices=["cpu", "cuda"], help="where HF trains (default: --device)")
    args = ap.parse_args()
    hf_device = args.hf_device or args.device
    b = lambda name: os.path.join(args.bin_dir, name)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    w = lambda name: os.path.join(args.work, name)

    try:
        import torch
        import transformers
    except Exception as error:  # noqa: BLE001 - the oracle is unusable either way
        print(f"FAIL torch/transformers not importable ({type(error).__name__}: {error}); scripts/setup.sh "
              "installs them into the test virtualenv", flush=True)
        return 1
    torch.set_num_threads(2)
    if hf_device == "cuda" and not torch.cuda.is_available():
        print("FAIL --device cuda: torch sees no CUDA device", flush=True)
        return 1

    tiny_corpus.build(args.bin_dir, args.work, valid_fraction="0")
    config = w("run.toml")
    with open(config, "w") as f:
        # head_dim 32: the smallest the CUDA attention kernel takes (32, 64, 128)
        f.write(f"""[model]
hidden_size = 64
num_hidden_layers = 2
num_attention_heads = 2
intermediate_size = 128
max_position_embeddings = 32
hidden_dropout_prob = 0.0
attention_probs_dropout_prob = 0.0

[data]
tokenizer = "{w('tok')}"
train_data = "{w('shards')}"

[training]
device = "{args.device}"
output_dir = "{w('model')}"
max_steps = {STEPS}
per_device_train_batch_size = {BATCH}
gradient_accumulation_steps = {ACCUMULATION}
learning_rate = {LR}
warmup_steps = {WARMUP}
lr_scheduler_type = "linear"
weight_decay = {WEIGHT_DECAY}
max_grad_norm = {MAX_GRAD_NORM}
logging_steps = 1
save_steps = {STEPS}
threads = 2
seed = 5
""")
    run([args.train_bin or b("bert_train"), "--config", config, "--dump-batches", w("dump")])
    with open(w("model/metrics.jsonl")) as f:
        ours = [json.loads(line)["loss"] for line in f if line.strip() and "loss" in json.loads(line)]
    batches = read_batches(w("dump/batches.bin"))
    check(len(batches) == STEPS * ACCUMULATION, f"{len(batches)} micro-batches dumped, {STEPS * ACCUMULATION} trained")
    check(len(ours) == STEPS, f"{len(ours)} logged steps, {STEPS} expected")
    if FAILURES:
        return 1

    theirs = hf_losses(torch, transformers, w("dump/init"), batches, hf_device)
    relative = [abs(a - b) / abs(b) for a, b in zip(ours, theirs)]
    worst = max(range(STEPS), key=lambda i: relative[i])
    print(f"step  ours       hf         rel", flush=True)
    for i in list(range(0, STEPS, 5)) + [STEPS - 1]:
        print(f"{i + 1:4d}  {ours[i]:.6f}  {theirs[i]:.6f}  {relative[i]:.2e}", flush=True)
    check(theirs[-1] < theirs[0] - 0.5, f"HF's loss falls: {theirs[0]:.4f} -> {theirs[-1]:.4f}")
    per_step = 1e-5 if args.device == "cpu" else 5e-2
    check(relative[worst] <= per_step, f"every step's loss within rel {per_step:g} of HF's (worst: step {worst + 1}, "
          f"ours {ours[worst]:.6f}, hf {theirs[worst]:.6f}, rel {relative[worst]:.2e})")
    tail_ours, tail_hf = sum(ours[-5:]) / 5, sum(theirs[-5:]) / 5
    check(abs(tail_ours - tail_hf) / tail_hf <= 0.02,
          f"final loss (mean of the last 5 steps) within 2%: ours {tail_ours:.6f}, hf {tail_hf:.6f}")

    # On the CPU the comparison can tell a wrong recipe apart: HF with the warmup one step longer
    # drifts beyond the per-step tolerance. (bf16's tolerance on the GPU is looser by design.)
    if args.device == "cpu":
        shifted = hf_losses(torch, transformers, w("dump/init"), batches, hf_device, schedule_shift=1)
        drift = max(abs(a - b) / abs(b) for a, b in zip(shifted, theirs))
        check(drift > 10 * per_step, f"a one-step warmup shift moves HF's own curve by rel {drift:.2e} "
              f"(> 10 x {per_step:g}): the tolerance catches a schedule off by one")

    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed", flush=True)
        return 1
    print("all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
