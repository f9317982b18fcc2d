#!/usr/bin/env python3
"""The JSON reader (common/json.cpp) against Python's json (what transformers reads config.json,
tokenizer.json and tokenizer_config.json with), on random documents.

Documents are drawn from a grammar of JSON values (objects with repeated keys, arrays, strings with
every escape, surrogate pairs and lone surrogates, raw control characters and non-ASCII text, numbers
with signs, leading zeros, fractions and exponents, 1e400, the literals) with JSON's whitespace and
some that is not, and half of them mutated by a few random bytes, some given invalid UTF-8 or a byte
order mark. Python reads the bytes as transformers does: decoded as UTF-8, then json.loads, with
NaN/Infinity refused (they are not JSON; Python takes them as an extension). For each document:
  - Python reads it and so do we: the same value (objects with their keys in the same order, a repeated
    key keeping its first place and last value; numbers as the same double, -0.0 included; a number
    beyond double's range as inf);
  - Python refuses it: we refuse it too, in one "doc.json:LINE: invalid JSON at column C: ..." line,
    and with a message that is valid UTF-8;
  - Python reads it and we refuse it: only nesting past 128 levels (Python recurses to ~1000; serde_json,
    which tokenizers and safetensors parse with, stops at 128 too) and a lone surrogate escape such as
    "\\ud800" (no UTF-8 form; serde_json refuses it too), each with an error that says so.
Prints PASS/FAIL lines; exits non-zero on any failure.
"""
import argparse
import json
import math
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oracle_cases import answer_cases, mutate_chars  # noqa: E402

FAILURES = []


def check(cond, msg):
    print(("PASS " if cond else "FAIL ") + msg, flush=True)
    if not cond:
        FAILURES.append(msg)


# ---- the generator --------------------------------------------------------------------------------

ESCAPES = ["\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t", "\\u00e9", "\\u0000", "\\u001F", "\\uAC00",
           "\\ud83d\\ude00", "\\uD83D\\uDE00"]
BAD_ESCAPES = ["\\ud83d", "\\ude00", "\\ud83d\\u0041", "\\ud83dx", "\\u12", "\\x41", "\\a", "\\'", "\\U0001F600",
               "\\u12G4", "\\", "\\ud83d\\ud83d"]
CHARS = ["a", "b", " ", "가", "é", "\U0001F600", "'", "/", "\x7f", "\u2028", "{", "}", ":", ","]
BAD_CHARS = ["\x00", "\x01", "\t", "\n", "\x1f", "\r"]


class Gen:
    def __init__(self, r, clean):
        self.r, self.clean = r, clean

    def maybe(self, p):
        return not self.clean and self.r.random() < p

    def ws(self):
        r = self.r
        if self.maybe(0.03):
            return r.choice(["\x0c", "\x0b", "\u00a0", "\u3000"])
        return r.choice(["", "", "", " ", "\n", "\t", "\r\n", "  "])

    def string(self):
        r = self.r
        parts = []
        for _ in range(r.randint(0, 6)):
            k = r.random()
            if k < 0.25:
                parts.append(r.choice(BAD_ESCAPES) if self.maybe(0.3) else r.choice(ESCAPES))
            elif self.maybe(0.05):
                parts.append(r.choice(BAD_CHARS))
            else:
                parts.append(r.choice(CHARS) if r.random() < 0.4 else "x")
        return '"' + "".join(parts) + '"'

    def digits(self, first_nonzero=False):
        r = self.r
        s = r.choice("123456789") if first_nonzero else r.choice("0123456789")
        return s + "".join(r.choice("0123456789") for _ in range(r.randint(0, 4)))

    def number(self):
        r = self.r
        if self.maybe(0.3):
            return r.choice(["01", "-01", "1.", ".5", "1.e5", "+1", "1e", "1e+", "-", "--1", "1.5.2", "0x10", "1_0",
                             "NaN", "Infinity", "-Infinity", "nan", "inf", "1e5e5", "00", "-.5", "1E+-2"])
        k = r.random()
        if k < 0.1:
            return r.choice(["0", "-0", "0.0", "-0.0", "1e400", "-1e400", "1e-400", "4.9e-324", "2.2250738585072014e-308",
                             "1.7976931348623157e308", "9007199254740993", "18446744073709551616",
                             "123456789012345678901234567890", "0e0", "0E-0", "1E+2"])
        s = r.choice(["", "-"]) + (r.choice(["0", self.digits(True)]))
        if r.random() < 0.4:
            s += "." + self.digits()
        if r.random() < 0.3:
            s += r.choice("eE") + r.choice(["", "+", "-"]) + self.digits()
        return s

    def value(self, depth=0):
        r = self.r
        k = r.random()
        if k < 0.25:
            return self.string()
        if k < 0.45:
            return self.number()
        if k < 0.52:
            return r.choice(["true", "false", "null"]) if not self.maybe(0.2) else r.choice(
                ["True", "nul", "tru", "None", "undefined"])
        if k < 0.76 and depth < 4:
            return self.array(depth + 1)
        if depth < 4:
            return self.object(depth + 1)
        return "1"

    def array(self, depth):
        r = self.r
        items = [self.ws() + self.value(depth) + self.ws() for _ in range(r.randint(0, 4))]
        out = "[" + ",".join(items)
        if self.maybe(0.1):
            out += ","
        return out + ("" if self.maybe(0.05) else "]")

    def object(self, depth):
        r = self.r
        members = []
        keys = ['"a"', '"b"', '"a"', '""', '"\\u0061"'] if r.random() < 0.5 else [self.string()]
        for _ in range(r.randint(0, 4)):
            key = r.choice(keys) if not self.maybe(0.05) else r.choice(["a", "'a'", "1", "null"])
            colon = ":" if not self.maybe(0.05) else r.choice(["", "=", "::"])
            members.append(self.ws() + key + self.ws() + colon + self.ws() + self.value(depth) + self.ws())
        out = "{" + ",".join(members)
        if self.maybe(0.1):
            out += ","
        return out + ("" if self.maybe(0.05) else "}")


MUTATION_BYTES = list('{}[]":,\\-+.0e \n\t') + ["\x00", "\x7f", "é", "\U0001F600", "\ufeff"]


def document(r):
    g = Gen(r, clean=r.random() < 0.45)
    text = g.ws() + g.value() + g.ws()
    if not g.clean and r.random() < 0.5:
        text = mutate_chars(r, text, MUTATION_BYTES)
    data = text.encode("utf-8", "surrogatepass")
    if not g.clean and r.random() < 0.05:
        at = r.randint(0, len(data))
        data = data[:at] + r.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"]) + data[at:]
    if not g.clean and r.random() < 0.02:
        data = b"\xef\xbb\xbf" + data
    return data


# ---- comparison ---------------------------------------------------------------------------------

def refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def same(tag, theirs):
    kind = tag[0]
    if kind == "z":
        return theirs is None
    if kind == "b":
        return isinstance(theirs, bool) and theirs == tag[1]
    if kind == "s":
        return isinstance(theirs, str) and theirs == tag[1]
    if kind == "n":
        if isinstance(theirs, bool) or not isinstance(theirs, (int, float)):
            return False
        ours = float(tag[1])
        try:
            want = float(theirs)
        except OverflowError:  # an integer beyond double's range: ours is inf
            want = math.copysign(math.inf, theirs)
        if isinstance(theirs, float):
            return ours == want and math.copysign(1, ours) == math.copysign(1, want)
        return ours == want  # an int: -0 is 0 in Python, -0.0 here
    if kind == "a":
        return isinstance(theirs, list) and len(theirs) == len(tag[1]) and all(
            same(a, b) for a, b in zip(tag[1], theirs))
    if kind == "o":
        if not isinstance(theirs, dict) or list(theirs) != [k for k, _ in tag[1]]:
            return False
        return all(same(v, theirs[k]) for k, v in tag[1])
    return False


def lone_surrogate(v):
    """Whether a string in `v` holds a lone surrogate (Python reads "\\ud800"; it has no UTF-8 form)."""
    if isinstance(v, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in v)
    if isinstance(v, (list, tuple)):
        return any(lone_surrogate(x) for x in v)
    if isinstance(v, dict):
        return any(lone_surrogate(k) or lone_surrogate(x) for k, x in v.items())
    return False


def depth_of(v):
    if isinstance(v, list):
        return 1 + max((depth_of(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((depth_of(x) for x in v.values()), default=0)
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="test_tokenizer (its [.json-oracle] case)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--count", type=int, default=30000)
    ap.add_argument("--seed", type=int, default=20261207)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    r = random.Random(args.seed)
    docs = [document(r) for _ in range(args.count)]
    docs += [b'{"a": 1, "b": 2, "a": 3}', b"[01]", b"[1.]", b"[-0]", b"[-0.0]", b"1e400", b'"\\ud800"',
             b'"a\x01"', b'"\xff"', b"\xef\xbb\xbf{}", b"[" * 128 + b"]" * 128, b"[" * 129 + b"]" * 129, b"NaN", b"[1,]", b" \x0c1"]
    problems, ours = answer_cases(args.bin, "[.json-oracle]", "BERT_JSON_CASES", "BERT_JSON_OUT", args.work, docs)
    check(not problems, f"{os.path.basename(args.bin)} [.json-oracle] answered every document: {problems}")
    if len(ours) != len(docs):
        sys.exit(1)

    counts = {"both read": 0, "both refuse": 0, "deeper than 128": 0, "lone surrogate": 0}
    shown = 0
    for i, (data, result) in enumerate(zip(docs, ours)):
        try:
            theirs = json.loads(data.decode("utf-8"), parse_constant=refuse_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            theirs = e
        problem = None
        if result.startswith("ok "):
            if isinstance(theirs, Exception):
                problem = f"we read what Python refuses ({theirs})"
            elif not same(json.loads(result[3:]), theirs):
                problem = f"other value: ours {result[3:][:200]}, theirs {theirs!r:.200}"
            else:
                counts["both read"] += 1
        else:
            message = result[len("error "):]
            parts = message.split(":")
            if not (message.startswith("doc.json:") and parts[1].isdigit() and "invalid JSON at column" in message):
                problem = f"our error is not 'doc.json:LINE: invalid JSON at column C: ...': {message}"
            elif isinstance(theirs, Exception):
                counts["both refuse"] += 1
            elif depth_of(theirs) > 128 and "nested more than 128 deep" in message:
                counts["deeper than 128"] += 1
            elif "unpaired" in message and "surrogate in a \\u escape" in message and lone_surrogate(
                    json.loads(data.decode("utf-8"), object_pairs_hook=list)):  # (a repeated key's first value too)
                counts["lone surrogate"] += 1  # as serde_json (tokenizers, safetensors) refuses it
            else:
                problem = f"we refuse what Python reads ({message})"
        if problem:
            FAILURES.append(problem)
            if shown < 25:
                shown += 1
                print(f"FAIL document {i} {data!r:.300}: {problem}", flush=True)
    check(not FAILURES, f"{len(docs)} documents: ours and Python's json agree on every one")
    print(f"  {counts['both read']} read alike, {counts['both refuse']} refused by both")
    check(counts["both read"] > len(docs) // 4 and counts["both refuse"] > len(docs) // 4
          and counts["deeper than 128"] > 0 and counts["lone surrogate"] > 10,
          f"both outcomes are exercised: {counts}")
    print(f"\n{'FAILED' if FAILURES else 'OK'}: {len(FAILURES)} failure(s)")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
