#!/usr/bin/env python3
"""Conformance of engine/safetensors and BertConfig's config.json against the real `safetensors` and
`transformers` packages (numpy only, no torch).

(a) Python -> C++: safetensors.numpy.save_file writes F32/F16/I32/I64 tensors (a scalar, an empty dim,
    a non-ASCII name, subnormals/inf/NaN in F16), serialize_file writes BF16; a sidecar JSON holds the
    expected values as fp32 bit patterns. `test_engine_io "[.python-roundtrip]"` reads and checks them.
(b) C++ -> Python: the same run writes our files; load_file, safe_open and deserialize must read them
    with the right names, shapes, dtypes, metadata and values, our f16/bf16 rounding must equal
    numpy's round-to-nearest-even bit for bit, and the header must be padded as the reference pads it.
(c) config.json: a transformers-written config.json goes through BertConfig::from_hf_json and
    to_hf_json; transformers.BertConfig must load the result (from_dict and from_pretrained) with every
    value it wrote; a config.json of our own must load too.
"""
import argparse
import json
import os
import struct
import subprocess
import sys

import numpy as np
from safetensors import TensorSpec, deserialize, safe_open, serialize_file
from safetensors.numpy import load_file, save_file

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from transformers import BertConfig  # noqa: E402

FAILURES = []
DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int32): "I32",
               np.dtype(np.int64): "I64"}
BERT_FIELDS = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
               "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id", "position_embedding_type",
               "use_cache"]


def check(cond, msg):
    print(("PASS " if cond else "FAIL ") + msg, flush=True)
    if not cond:
        FAILURES.append(msg)


def f32_bits(values):
    return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).ravel().tolist()


def bf16_rne(values):
    """fp32 -> bf16 bit patterns, round to nearest even (NaN positions are compared separately)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def hash64(data):
    """common/hash.cpp's hash64 (a multiply-rotate over 8-byte little-endian words, then the tail)."""
    m = (1 << 64) - 1

    def rotl(x, r):
        return ((x << r) | (x >> (64 - r))) & m

    n = len(data)
    h = 0x9E3779B97F4A7C15 ^ ((n * 0xFF51AFD7ED558CCD) & m)
    full = n // 8 * 8
    for (w,) in struct.iter_unpack("<Q", data[:full]):
        w = rotl((w * 0x87C37B91114253D5) & m, 31)
        h ^= (w * 0x4CF5AD432745937F) & m
        h = (rotl(h, 27) * 5 + 0x52DCE729) & m
    tail = int.from_bytes(data[full:], "little")
    h ^= (tail * 0x87C37B91114253D5) & m
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & m
    return h ^ (h >> 33)


def sidecar(path, tensors, metadata):
    entries = {}
    for name, (dtype, array) in tensors.items():
        entry = {"dtype": dtype, "shape": list(array.shape)}
        if dtype in ("I32", "I64"):
            entry["int_values"] = [int(v) for v in array.ravel()]
        else:
            entry["f32_bits"] = f32_bits(array.astype(np.float32))
        entries[name] = entry
    with open(path + ".json", "w", encoding="utf-8") as f:
        json.dump({"metadata": metadata, "tensors": entries}, f, ensure_ascii=False)


def same_bits_or_both_nan(label, got_bits, want_bits, got_nan, want_nan):
    nan_ok = np.array_equal(got_nan, want_nan)
    mask = ~want_nan
    differ = int(np.count_nonzero(got_bits[mask] != want_bits[mask]))
    check(nan_ok and differ == 0,
          f"{label}: {len(want_bits)} values bit-identical to numpy's rounding ({differ} differ, NaNs match: {nan_ok})")


def header_of(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    return data, n, data[8:8 + n]


def write_inputs(work):
    rng = np.random.default_rng(1234)
    half = np.concatenate([
        rng.standard_normal(50).astype(np.float16),
        np.array([0.0, -0.0, 65504.0, -65504.0, 6.1e-05, 6e-08, 1e-07, np.inf, -np.inf, np.nan], np.float16),
        np.arange(0, 1024, 37, dtype=np.uint16).view(np.float16),  # subnormals
    ])
    main = {
        "bert.embeddings.word_embeddings.weight": rng.standard_normal((7, 5)).astype(np.float32),
        "cls.predictions.bias": (rng.standard_normal(7) * 1e-3).astype(np.float32),
        "scalar": np.array(-1.75, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "층.가중치": np.array([1e-40, -3.4e38, 0.1], np.float32),
        "half": half,
        "ids": np.arange(-3, 6, dtype=np.int32).reshape(3, 3),
        "big_ids": np.array([2**40, -5, 0], np.int64),
    }
    metadata = {"format": "pt", "source": "numpy ✓"}
    main_path = os.path.join(work, "from_python.safetensors")
    save_file(main, main_path, metadata=metadata)
    sidecar(main_path, {k: (DTYPE_NAMES[v.dtype], v) for k, v in main.items()}, metadata)

    # BF16 through the reference writer's raw interface (numpy has no bfloat16 dtype).
    f32 = np.concatenate([rng.standard_normal(64).astype(np.float32), np.array([1.0, -0.0, 3e38, 1e-39], np.float32)])
    bf16 = bf16_rne(f32)
    bf16_path = os.path.join(work, "from_python_bf16.safetensors")
    serialize_file({"weight.bf16": TensorSpec(dtype="bfloat16", shape=[4, 17], data_ptr=bf16.ctypes.data,
                                              data_len=bf16.nbytes),
                    "weight.f32": TensorSpec(dtype="float32", shape=[68], data_ptr=f32.ctypes.data,
                                             data_len=f32.nbytes)},
                   bf16_path, metadata={"format": "pt"})
    as_f32 = (bf16.astype(np.uint32) << 16).view(np.float32).reshape(4, 17)
    sidecar(bf16_path, {"weight.bf16": ("BF16", as_f32), "weight.f32": ("F32", f32)}, {"format": "pt"})
    return main_path, bf16_path


def run_cpp(binary, env_extra):
    env = dict(os.environ, **env_extra)
    r = subprocess.run([binary, "[.python-roundtrip]"], env=env, capture_output=True, text=True)
    ok = r.returncode == 0
    check(ok, f"test_engine_io [.python-roundtrip] ({', '.join(sorted(env_extra))}) exits 0")
    if not ok:
        print(r.stdout[-4000:], r.stderr[-2000:])
    return ok


def check_our_safetensors(out_path, out_bf16_path):
    loaded = load_file(out_path)
    expected_names = {"bert.encoder.layer.0.attention.self.query.weight", "scalar", "empty", "tricky.f32", "tricky.f16"}
    check(set(loaded) == expected_names, f"load_file: tensor names {sorted(loaded)}")
    matrix = loaded["bert.encoder.layer.0.attention.self.query.weight"]
    want = (np.arange(12, dtype=np.float32) * 0.5 - 2.75).reshape(3, 4)
    check(matrix.dtype == np.float32 and matrix.shape == (3, 4) and np.array_equal(matrix, want),
          "load_file: F32 [3, 4] matrix values")
    check(loaded["scalar"].shape == () and loaded["scalar"].item() == 3.25, "load_file: F32 scalar [] = 3.25")
    check(loaded["empty"].shape == (0, 5) and loaded["empty"].dtype == np.float32, "load_file: F32 empty [0, 5]")
    tricky = loaded["tricky.f32"]
    f16 = loaded["tricky.f16"]
    check(f16.dtype == np.float16 and f16.shape == tricky.shape, f"load_file: F16 {list(f16.shape)}")
    with np.errstate(over="ignore"):
        want16 = tricky.astype(np.float16)
    same_bits_or_both_nan("f32 -> f16", f16.view(np.uint16), want16.view(np.uint16), np.isnan(f16), np.isnan(want16))

    with safe_open(out_path, framework="numpy") as f:
        check(set(f.keys()) == expected_names, "safe_open: keys")
        check(f.metadata() == {"format": "pt", "producer": "bertforge"}, f"safe_open: metadata {f.metadata()}")
        check(np.array_equal(f.get_tensor("bert.encoder.layer.0.attention.self.query.weight"), want),
              "safe_open: get_tensor values")
        check(f.get_slice("tricky.f16").get_dtype() == "F16", "safe_open: get_slice dtype F16")

    data, n, header = header_of(out_path)
    text = header.decode("utf-8")
    check(n % 8 == 0 and text == text.rstrip(" ") + " " * (n - len(text.rstrip(" "))),
          f"header: {n} bytes, a multiple of 8, padded with spaces")
    offsets = sorted(v["data_offsets"] for k, v in json.loads(text).items() if k != "__metadata__")
    contiguous = all(a[1] == b[0] for a, b in zip(offsets, offsets[1:])) and offsets[0][0] == 0
    check(contiguous and offsets[-1][1] == len(data) - 8 - n, "header: data_offsets tile the buffer")

    with safe_open(out_bf16_path, framework="numpy") as f:
        check(set(f.keys()) == {"tricky.f32", "tricky.bf16"}, "safe_open (bf16 file): keys")
        check(f.get_slice("tricky.bf16").get_dtype() == "BF16", "safe_open: get_slice dtype BF16")
        meta = f.metadata()
    # That file also carries our checkpoints' data hash: an extra metadata string safetensors passes
    # through, over exactly the data buffer (common/hash.cpp's hash64, written out again here).
    data_bf16, n_bf16, _ = header_of(out_bf16_path)
    want_hash = f"{hash64(data_bf16[8 + n_bf16:]):016x}"
    check(meta == {"format": "pt", "bertforge_data_hash64": want_hash},
          f"safe_open (bf16 file): metadata {meta}, want the data hash {want_hash}")
    with open(out_bf16_path, "rb") as fh:
        raw = dict(deserialize(fh.read()))
    ref = np.frombuffer(bytes(raw["tricky.f32"]["data"]), dtype=np.float32)
    got = np.frombuffer(bytes(raw["tricky.bf16"]["data"]), dtype=np.uint16)
    check(raw["tricky.bf16"]["dtype"] == "BF16" and raw["tricky.bf16"]["shape"] == [len(ref)],
          "deserialize: BF16 dtype and shape")
    got_nan = np.isnan((got.astype(np.uint32) << 16).view(np.float32))
    same_bits_or_both_nan("f32 -> bf16", got, bf16_rne(ref), got_nan, np.isnan(ref))


def check_config(label, ours_path, want):
    with open(ours_path, encoding="utf-8") as f:
        ours = json.load(f)
    check(ours.get("architectures") == ["BertForPreTraining"] and ours.get("model_type") == "bert",
          f"{label}: architectures [BertForPreTraining], model_type bert")
    try:
        cfg = BertConfig.from_dict(ours)
        from_dir = BertConfig.from_pretrained(os.path.dirname(ours_path))
    except Exception as e:  # noqa: BLE001 - any failure of transformers to load it is the finding
        check(False, f"{label}: transformers.BertConfig loads our config.json ({e})")
        return
    check(True, f"{label}: transformers.BertConfig.from_dict and from_pretrained load our config.json")
    bad = [k for k in BERT_FIELDS if getattr(cfg, k) != want[k] or getattr(from_dir, k) != want[k]]
    check(not bad, f"{label}: BertConfig fields equal ({', '.join(f'{k}: {getattr(cfg, k)} != {want[k]}' for k in bad)})")
    # Every key transformers itself writes for this config is in ours with the same value.
    hf_written = json.loads(BertConfig(**{k: want[k] for k in BERT_FIELDS}).to_json_string())
    differ = [k for k, v in hf_written.items() if ours.get(k, "<absent>") != v]
    check(not differ, f"{label}: every key of transformers' own config.json matches ({differ})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="path of the test_engine_io executable")
    ap.add_argument("--work", required=True, help="scratch directory")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)

    main_in, bf16_in = write_inputs(args.work)
    hf_dir = os.path.join(args.work, "hf_config")
    hf = BertConfig(vocab_size=1234, hidden_size=96, num_hidden_layers=3, num_attention_heads=6,
                    intermediate_size=200, hidden_act="gelu_new", hidden_dropout_prob=0.05,
                    attention_probs_dropout_prob=0.0, max_position_embeddings=256, type_vocab_size=1,
                    initializer_range=0.015, layer_norm_eps=1e-6, pad_token_id=1)
    hf.save_pretrained(hf_dir)

    ours_dir = os.path.join(args.work, "ours")
    own_dir = os.path.join(args.work, "ours_own_config")
    os.makedirs(ours_dir, exist_ok=True)
    os.makedirs(own_dir, exist_ok=True)
    out_path = os.path.join(ours_dir, "model.safetensors")
    out_bf16 = os.path.join(ours_dir, "bf16.safetensors")
    env = {"BERT_SAFETENSORS_IN": main_in, "BERT_SAFETENSORS_IN_BF16": bf16_in, "BERT_SAFETENSORS_OUT": out_path,
           "BERT_SAFETENSORS_OUT_BF16": out_bf16, "BERT_CONFIG_IN": os.path.join(hf_dir, "config.json"),
           "BERT_CONFIG_OUT": os.path.join(ours_dir, "config.json")}
    if run_cpp(args.bin, env):
        check(True, "C++ reads Python's F32/F16/I32/I64/BF16 tensors, scalar, empty dims, metadata exactly")
        check_our_safetensors(out_path, out_bf16)
        check_config("HF -> ours -> HF config.json", env["BERT_CONFIG_OUT"], hf.to_dict())

    env_own = dict(env, BERT_CONFIG_IN="", BERT_CONFIG_OUT=os.path.join(own_dir, "config.json"),
                   BERT_SAFETENSORS_OUT=os.path.join(own_dir, "model.safetensors"), BERT_SAFETENSORS_OUT_BF16="")
    if run_cpp(args.bin, env_own):
        want = BertConfig(vocab_size=1234, hidden_size=128, num_hidden_layers=2, num_attention_heads=4).to_dict()
        check_config("our own config.json", env_own["BERT_CONFIG_OUT"], want)

    # A corrupted copy of Python's file must be rejected by us (sanity of the harness: the C++ side fails).
    data, n, _ = header_of(main_in)
    bad = os.path.join(args.work, "truncated.safetensors")
    with open(bad, "wb") as f:
        f.write(data[:-3])
    with open(main_in + ".json", encoding="utf-8") as f:
        side = f.read()
    with open(bad + ".json", "w", encoding="utf-8") as f:
        f.write(side)
    r = subprocess.run([args.bin, "[.python-roundtrip]"], capture_output=True, text=True,
                       env=dict(os.environ, **dict(env_own, BERT_SAFETENSORS_IN=bad, BERT_SAFETENSORS_IN_BF16="")))
    check(r.returncode != 0 and "truncated" in r.stdout + r.stderr,
          "a truncated copy of Python's file is rejected with a 'truncated' message")

    print(f"{'FAILED' if FAILURES else 'OK'}: {len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
