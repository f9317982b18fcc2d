#!/usr/bin/env python3
"""The safetensors reader (engine/safetensors.cpp) against the `safetensors` package, on random files.

Each file is a valid one (0-4 tensors of any dtype and shape, scalars and empty dims included, the
header in any order, metadata or none, the header padded or not), then, for most, one or two
mutations: offsets shifted, swapped, overlapping, leaving a gap or running past the end; fields or
__metadata__ repeated; dtypes
unknown or misspelled; shapes negative, fractional, nested or too large; metadata values that are not
strings; entries with missing or extra keys; a tensor named __metadata__; repeated names; a header
that is not an object, is cut, has leading or trailing bytes, invalid UTF-8, or a header length past
the end; and random bytes of the header text changed. `safetensors.deserialize` (the package's Rust
reader, no framework) is the oracle:
  - it reads the file and so do we (every tensor's bytes);
  - it refuses the file: we refuse it too, in one line naming the file;
  - it reads the file and we refuse it: only a dtype our reader does not know, which it names (newer
    ones such as F8_E8M0, F4 and C64 appear in no BERT checkpoint), or a tensor name the header repeats
    (the package takes the last entry; we refuse the ambiguity);
  - (a field repeated inside an entry, or __metadata__ repeated, both refuse; a key repeated inside
    __metadata__ both read, the last value);
  - we read what it refuses: only an integer written as a float (0.0, 1e0) in data_offsets or a shape:
    our JSON numbers are doubles, read by value.
Prints PASS/FAIL lines; exits non-zero on any failure.
"""
import argparse
import json
import os
import random
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oracle_cases import answer_cases  # noqa: E402

from safetensors import deserialize

FAILURES = []

OURS = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4,
        "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
NEWER = {"F8_E8M0": 1, "C64": 8}  # known to the package, not to our reader


def check(cond, msg):
    print(("PASS " if cond else "FAIL ") + msg, flush=True)
    if not cond:
        FAILURES.append(msg)


def valid_file(r):
    """(header dict in header order, data buffer) of a valid file."""
    names = r.sample(["a", "b.weight", "bert.embeddings.word_embeddings.weight", "ü", "x y", "c"], r.randint(0, 4))
    entries = []
    for name in names:
        dtype = r.choice(list(OURS)) if r.random() < 0.95 else r.choice(list(NEWER))
        shape = [r.choice([0, 1, 2, 3, 5]) for _ in range(r.randint(0, 3))]
        entries.append([name, dtype, shape])
    order = entries[:]
    r.shuffle(order)  # the data in another order than the header's
    offset = 0
    ranges = {}
    for name, dtype, shape in order:
        n = 1
        for d in shape:
            n *= d
        size = n * {**OURS, **NEWER}[dtype]
        ranges[name] = [offset, offset + size]
        offset += size
    header = {}
    if r.random() < 0.4:
        header["__metadata__"] = {"format": "pt", "note": r.choice(["", "한글", "x"])}
    for name, dtype, shape in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": ranges[name]}
    if r.random() < 0.3:  # the metadata last
        meta = header.pop("__metadata__", None)
        if meta is not None:
            header["__metadata__"] = meta
    data = bytes(r.getrandbits(8) for _ in range(offset))
    return header, data


def mutate(r, header, data):
    """Structural mutations of the header dict; returns (header, data, raw header text or None)."""
    tensors = [k for k in header if k != "__metadata__"]
    op = r.choice(["offset", "swap", "dtype", "shape", "meta", "missing", "extra", "meta_tensor", "duplicate",
                   "data", "number", "repeated_field", "repeated_meta"])
    raw = None
    if op == "offset" and tensors:
        t = header[r.choice(tensors)]
        i = r.randint(0, 1)
        t["data_offsets"][i] += r.choice([-8, -1, 1, 2, 1000])
    elif op == "swap" and len(tensors) >= 2:
        a, b = r.sample(tensors, 2)
        header[a]["data_offsets"], header[b]["data_offsets"] = header[b]["data_offsets"], header[a]["data_offsets"]
    elif op == "dtype" and tensors:
        header[r.choice(tensors)]["dtype"] = r.choice(["f32", "F12", "FP32", "", 4, None, "F8_E8M0", "C64", "F4",
                                                       "float32", "BF16 "])
    elif op == "shape" and tensors:
        header[r.choice(tensors)]["shape"] = r.choice([[-1], [1.5], ["2"], [[2]], 3, None, [2 ** 40, 2 ** 40],
                                                       [2 ** 64], [], [0], [1, 1, 1, 1, 1, 1, 1, 1, 1]])
    elif op == "meta":
        header["__metadata__"] = r.choice([{"a": 1}, {"a": None}, {"a": ["x"]}, None, [], "x", {}, {"": ""}])
    elif op == "missing" and tensors:
        del header[r.choice(tensors)][r.choice(["dtype", "shape", "data_offsets"])]
    elif op == "extra" and tensors:
        header[r.choice(tensors)][r.choice(["foo", "dtype2", "offsets"])] = r.choice([1, "x", None])
    elif op == "meta_tensor":
        header["__metadata__"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    elif op == "duplicate" and tensors:
        name = r.choice(tensors)
        text = json.dumps(header)
        entry = json.dumps({name: header[name]})[1:-1]
        raw = text[:-1] + ", " + entry + "}"
    elif op == "repeated_field" and tensors and isinstance(header[tensors[0]], dict) and header[tensors[0]]:
        entry = header[tensors[0]]
        field = r.choice(list(entry))
        text = json.dumps(header)
        inner = json.dumps(entry)
        raw = text.replace(inner, inner[:-1] + ", " + json.dumps({field: entry[field]})[1:-1] + "}", 1)
    elif op == "repeated_meta":
        text = json.dumps(header)
        raw = text[:-1] + (", " if len(header) else "") + '"__metadata__": {"k": "v"}}'
        if "__metadata__" not in header and r.random() < 0.5:
            raw = '{"__metadata__": {"a": "b", "a": "c"}' + (", " + text[1:] if len(header) else "}")
    elif op == "data":
        data = data + r.choice([b"\0", b"\0" * 8]) if r.random() < 0.5 else data[:-1]
    elif op == "number" and tensors and isinstance(header[tensors[0]].get("data_offsets"), list):
        t = header[tensors[0]]
        raw = json.dumps(header).replace(json.dumps(t["data_offsets"]),
                                         r.choice(["[0.0, 0]", "[-0, 0]", "[0, 1e0]", '["0", 0]', "[0]", "[0, 0, 0]",
                                                   "null", "[9007199254740993, 9007199254740993]"]), 1)
    return header, data, raw


def encode(r, header, data, raw):
    text = (raw if raw is not None else json.dumps(header, ensure_ascii=r.random() < 0.5)).encode("utf-8")
    k = r.random()
    if k < 0.3:
        text += b" " * ((8 - len(text) % 8) % 8)  # padded as the reference pads
    elif k < 0.36:
        text = r.choice([b" ", b"\n", b"\t", b"\xef\xbb\xbf"]) + text
    elif k < 0.42:
        text += r.choice([b"\0", b"\0\0\0", b"x", b"\n", b"}", b"\xff"])
    elif k < 0.5:  # random bytes of the header changed
        b = bytearray(text)
        for _ in range(r.randint(1, 2)):
            if b:
                b[r.randrange(len(b))] = r.choice(b'{}[]":,0-. \x00\xff\xc3')
        text = bytes(b)
    length = len(text)
    k = r.random()
    if k < 0.03:
        length += r.choice([1, 8, len(data) + 1, 2 ** 40])
    elif k < 0.05 and length:
        length -= r.randint(1, length)
    out = struct.pack("<Q", length) + text + data
    if r.random() < 0.01:
        out = out[: r.randint(0, 10)]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="test_engine_io (its [.safetensors-oracle] case)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=20261207)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    r = random.Random(args.seed)
    paths, blobs = [], []
    for i in range(args.count):
        header, data = valid_file(r)
        raw = None
        for _ in range(r.choice([0, 1, 1, 2])):
            try:
                header, data, raw = mutate(r, header, data)
            except (KeyError, TypeError, AttributeError):  # a second mutation where the first left no field
                pass
            if raw is not None:
                break
        blob = encode(r, header, data, raw)
        path = os.path.join(args.work, f"{i:05d}.safetensors")
        with open(path, "wb") as f:
            f.write(blob)
        paths.append(path)
        blobs.append(blob)
    problems, ours = answer_cases(args.bin, "[.safetensors-oracle]", "BERT_SAFETENSORS_CASES",
                                  "BERT_SAFETENSORS_RESULTS", args.work, [p.encode() for p in paths])
    check(not problems, f"test_engine_io [.safetensors-oracle] answered every file: {problems}")
    if len(ours) != len(paths):
        sys.exit(1)

    counts = {"both read": 0, "both refuse": 0, "newer dtype": 0, "repeated name": 0, "float integer": 0}
    shown = 0
    for path, blob, result in zip(paths, blobs, ours):
        try:
            theirs = deserialize(blob)
        except Exception as e:  # the package raises SafetensorError (and others) for a bad file
            theirs = e
        problem = None
        if result.startswith("ok "):
            if isinstance(theirs, Exception):
                if "expected usize" in str(theirs) and "floating point" in str(theirs):
                    counts["float integer"] += 1
                else:
                    problem = f"we read what safetensors refuses ({str(theirs)[:150]})"
            elif int(result[3:]) != len(theirs):
                problem = f"{result[3:]} tensors against {len(theirs)}"
            else:
                counts["both read"] += 1
        else:
            message = result[len("error "):]
            if not message.startswith(path + ":") and not message.startswith(path + " (JSON header)"):
                problem = f"our error does not name the file: {message}"
            elif isinstance(theirs, Exception):
                counts["both refuse"] += 1
            elif any(f"unknown dtype '{d}'" in message for d in NEWER) or "unknown dtype 'F4'" in message:
                counts["newer dtype"] += 1
            elif "duplicate tensor name" in message:
                counts["repeated name"] += 1
            else:
                problem = f"we refuse what safetensors reads ({message})"
        if problem:
            FAILURES.append(problem)
            if shown < 25:
                shown += 1
                header_len = struct.unpack("<Q", blob[:8])[0] if len(blob) >= 8 else 0
                print(f"FAIL {os.path.basename(path)} header {blob[8:8 + min(header_len, 400)]!r}: {problem}",
                      flush=True)
    check(not FAILURES, f"{len(paths)} files: ours and safetensors agree on every one")
    print(f"  {counts}")
    check(counts["both read"] > len(paths) // 5 and counts["both refuse"] > len(paths) // 5
          and counts["newer dtype"] > 0, f"every outcome is exercised: {counts}")
    print(f"\n{'FAILED' if FAILURES else 'OK'}: {len(FAILURES)} failure(s)")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
