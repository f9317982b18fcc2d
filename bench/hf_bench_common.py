"""What the benchmarks share (bench_train_cpu.py, bench_train_gpu.py, bench_infer_cpu.py): the synthetic
batch both sides train on, the FLOP formula every side is measured with, HF Trainer's weight-decay
groups, the CPU's name and the JSON writer."""

CLS, SEP, MASK, FIRST_ORDINARY = 2, 3, 4, 5


def training_flops(s, mlm_rows):
    """engine/bert.h bert_training_flops(config, batch, seq, mlm_rows) for shape dict s."""
    h, i, L, v = s["hidden"], s["intermediate"], s["layers"], s["vocab"]
    tokens = s["batch"] * s["seq"]
    encoder = 6 * L * (4 * h * h + 2 * h * i) * tokens
    attention = 12 * L * s["seq"] * h * tokens
    mlm_head = 6 * (h * h + h * v) * mlm_rows
    heads = 6 * (h * h + 2 * h) * s["batch"]  # pooler + NSP
    return float(encoder + attention + mlm_head + heads)


def masked_per_sequence(seq):
    """bench_train_step's count of labelled positions per sequence: round(0.15 * (seq - 3))."""
    return int(0.15 * (seq - 3) + 0.5)


def make_batch(torch, s):
    """bench_train_step's batch: [CLS] A [SEP] B [SEP], random ids, no padding, 15% labelled (80/10/10)."""
    B, S, V = s["batch"], s["seq"], s["vocab"]
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(FIRST_ORDINARY, V, (B, S), generator=g)
    len_a = (S - 3) // 2
    sep_a, sep_b = 1 + len_a, S - 1
    ids[:, 0] = CLS
    ids[:, sep_a] = SEP
    ids[:, sep_b] = SEP
    types = torch.zeros(B, S, dtype=torch.long)
    types[:, sep_a + 1:] = 1
    labels = torch.full((B, S), -100, dtype=torch.long)
    candidates = torch.tensor([t for t in range(S) if t not in (0, sep_a, sep_b)])
    k = masked_per_sequence(S)
    for b in range(B):
        pos = candidates[torch.randperm(len(candidates), generator=g)[:k]]
        labels[b, pos] = ids[b, pos]
        u = torch.rand(k, generator=g)
        ids[b, pos[u < 0.8]] = MASK
        rnd = pos[(u >= 0.8) & (u < 0.9)]
        ids[b, rnd] = torch.randint(FIRST_ORDINARY, V, (len(rnd),), generator=g)
    nsp = torch.randint(0, 2, (B,), generator=g)
    attention_mask = torch.ones(B, S, dtype=torch.long)
    return dict(input_ids=ids, token_type_ids=types, attention_mask=attention_mask, labels=labels,
                next_sentence_label=nsp)


def hf_decay_groups(torch, model, weight_decay=0.01):
    """HF Trainer.create_optimizer's groups: weight decay on everything but biases and LayerNorm
    parameters (the same names as transformers' get_parameter_names(model, ALL_LAYERNORM_LAYERS),
    written out so it works on every transformers version)."""
    no_decay = set()
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            for n, _ in module.named_parameters(recurse=False):
                no_decay.add(f"{module_name}.{n}" if module_name else n)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if n not in no_decay and "bias" not in n], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n in no_decay or "bias" in n], "weight_decay": 0.0},
    ]


def write_json(record, path):
    """The benchmark's record as indented JSON at `path` (directories made), and a line saying so."""
    import json
    import os
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"wrote {path}")


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    import platform
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
