#!/usr/bin/env python3
"""The run-config TOML parser (engine/toml.cpp) against Python's tomllib (TOML 1.0), on random documents.

Documents are drawn from a grammar of what a run config holds and what TOML forbids around it (keys
bare, quoted and literal; basic strings with valid and invalid escapes; integers with signs,
underscores, leading zeros, hex/octal/binary and 64-bit overflow; floats with exponents, inf, nan and
misplaced dots; booleans; arrays nested, spanning lines, with comments and trailing commas; tables,
repeated and nested; comments with control characters; CRLF and bare CR), plus what our subset refuses
(dates, inline tables, arrays of tables, dotted keys, multi-line strings), and a third of them mutated
by a few random bytes. For each document:
  - tomllib reads it and so do we: the same tables, keys and values (floats to the bit, -0.0 and nan
    included; integers exact);
  - tomllib refuses it: we refuse it too, in one "run.toml:LINE: ..." line;
  - tomllib reads it and we refuse it: only with an error that names a feature our subset leaves out
    (the "not supported" list below; every such error is counted) or a value TOML says must not be
    read lossily (an integer beyond 64 bits, a float beyond double's range, which tomllib returns as a
    Python int / inf).
Prints PASS/FAIL lines; exits non-zero on any failure.
"""
import argparse
import math
import os
import random
import sys
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oracle_cases import answer_cases, mutate_chars  # noqa: E402

FAILURES = []

# What our subset refuses although TOML reads it (engine/toml.h), as the errors word it.
NOT_SUPPORTED = ("are not supported", "is not supported", "out of the 64-bit range", "is out of range",
                 "nested more than")


def check(cond, msg):
    print(("PASS " if cond else "FAIL ") + msg, flush=True)
    if not cond:
        FAILURES.append(msg)


# ---- the generator --------------------------------------------------------------------------------

BARE = "abcxyzABCXYZ0123456789_-"
TEXT_CHARS = (list("abc xyz 한국어 é") + ["\t", "\\", "\"", "'", "#", "=", "[", "]", ",", ".", "{", "}", "\x01", "\x7f",
              "\u00a0", "\U0001f600", "\r", "\n"])
GOOD_ESCAPES = ["\\b", "\\t", "\\n", "\\f", "\\r", "\\\"", "\\\\", "\\u00e9", "\\u0041", "\\U0001F600", "\\U0000001f",
                "\\u00E9"]
BAD_ESCAPES = ["\\uD800", "\\U00110000", "\\u12", "\\x41", "\\e", "\\ ", "\\'", "\\0", "\\UFFFFFFFF", "\\가", "\\\x01"]
NAMES = ["a", "b", "c", "x"]  # few, so that keys and tables meet


class Gen:
    """Random documents; `clean` ones keep to valid forms (but for how keys and tables meet)."""

    def __init__(self, r, clean):
        self.r, self.clean = r, clean

    def maybe(self, p):  # an invalid form's chance: none in a clean document
        return not self.clean and self.r.random() < p

    def char(self, quote):
        r = self.r
        if self.maybe(0.15):
            return r.choice(TEXT_CHARS)
        c = r.choice(["a", "b", " ", "가", "나", "é", "\t", "#", "=", "[", "'", '"', ","]) if r.random() < 0.3 else "e"
        return "q" if c in (quote, "\\") else c

    def basic_string(self):
        r = self.r
        parts = []
        for _ in range(r.randint(0, 6)):
            if r.random() < 0.3:
                parts.append(r.choice(BAD_ESCAPES) if self.maybe(0.5) else r.choice(GOOD_ESCAPES))
            else:
                parts.append(self.char('"'))
        return '"' + "".join(parts) + '"'

    def literal_string(self):
        return "'" + "".join(self.char("'") for _ in range(self.r.randint(0, 6))) + "'"

    def digits(self, n=None):
        return "".join(self.r.choice("0123456789") for _ in range(n or self.r.randint(1, 5)))

    def underscored(self, s):
        r = self.r
        if len(s) > 1 and r.random() < 0.3:
            i = r.randint(1, len(s) - 1) if self.clean else r.randint(0, len(s))
            s = s[:i] + ("__" if self.maybe(0.5) else "_") + s[i:]
        return s

    def decimal(self):
        s = self.digits()
        if self.clean:
            s = s.lstrip("0") or "0"
        elif self.r.random() < 0.2 and s[0] != "0":
            s = "0" + s
        return self.underscored(s)

    def integer(self):
        r = self.r
        k = r.random()
        if k < 0.5:
            return r.choice(["", "", "+", "-"]) + self.decimal()
        if k < 0.7:
            prefix, alphabet = r.choice([("0x", "0123456789abcdefABCDEF"), ("0o", "01234567"), ("0b", "01")])
            if self.maybe(0.3):
                prefix, alphabet = r.choice([("0X", "0123456789abcdef"), ("0x", "0123456789g"), ("0o", "8")])
            body = self.underscored("".join(r.choice(alphabet) for _ in range(r.randint(1 if self.clean else 0, 8))))
            return (r.choice(["+", "-"]) if self.maybe(0.2) else "") + prefix + body
        if k < 0.85:
            big = [2 ** 63 - 1, -(2 ** 63), 9 * 10 ** 18, 0, -1]
            if not self.clean:
                big += [2 ** 63, -(2 ** 63) - 1, 2 ** 64, 10 ** 19]
            return str(r.choice(big))
        return r.choice(["0", "+0", "-0", "1_000", "0xff_ff", "0o777", "0b1_0"] +
                        ([] if self.clean else ["00", "0_0", "_1", "1_", "0x_1", "0b_1", "007"]))

    def floating(self):
        r = self.r
        k = r.random()
        if k < 0.55:
            s = r.choice(["", "+", "-"]) + self.decimal()
            dot = r.random() < 0.7
            if dot:
                s += "." + self.underscored(self.digits()) if not self.maybe(0.1) else "."
            if not dot or r.random() < 0.5:
                s += r.choice("eE") + r.choice(["", "+", "-"]) + self.underscored(self.digits(r.randint(1, 3)))
            return s
        if k < 0.75:
            if self.maybe(0.5):
                return r.choice(["", "+", "-"]) + r.choice(["Inf", "NaN", "infinity", "in", "nan_"])
            return r.choice(["", "+", "-"]) + r.choice(["inf", "nan"])
        good = ["1e-400", "4.9e-324", "1.7976931348623157e308", "0.0", "-0.0", "+0.0", "0e0", "1_000.000_1",
                "3.14159", "5e-5", "2E-3", "1e1_0", "0.1e-0_1", "6.02e23", "1e+9"]
        bad = ["1e400", "-1e400", "1.8e308", ".5", "5.", "1.e5", "1e", "1e+", "01.5", "00.0", "1__0.0", "1._0", "1.0_"]
        return r.choice(bad if self.maybe(0.5) else good)

    def other_value(self):
        # Outside our subset (dates, inline tables, multi-line strings), then what TOML refuses.
        return self.r.choice(["1979-05-27", "1979-05-27T07:32:00Z", "07:32:00", "1979-05-27 07:32:00", "{a = 1}",
                              "{}", '"""multi"""', "'''multi'''"] +
                             ([] if self.clean else ["True", "FALSE", "tru", "bare", "", "nul", "[[1]]", "-", "_"]))

    def value(self, depth=0):
        r = self.r
        k = r.random()
        if k < 0.2:
            return self.basic_string()
        if k < 0.3:
            return self.literal_string()
        if k < 0.5:
            return self.integer()
        if k < 0.68:
            return self.floating()
        if k < 0.76:
            return r.choice(["true", "false"])
        if k < 0.94 and depth < 3:
            return self.array(depth + 1)
        if k < 0.97 or not self.clean:
            return self.other_value()
        return "1"

    def array(self, depth):
        r = self.r
        out = "["
        for i in range(r.randint(0, 4)):
            if i:
                out += ","
            out += r.choice(["", " ", "\n", " \n  ", "\t", " # note\n", "\r\n"])
            out += self.value(depth)
            out += r.choice(["", "", " ", "\n", " # c\n"])
        if out != "[" and r.random() < 0.2:
            out += ","
        if self.maybe(0.1):
            out += ",,"
        return out + r.choice(["", "\n", " "]) + ("" if self.maybe(0.05) else "]")

    def key(self):
        r = self.r
        k = r.random()
        if k < 0.5:
            return r.choice(NAMES)
        if k < 0.7:
            return "".join(r.choice(BARE) for _ in range(r.randint(1, 4)))
        if k < 0.8:
            return r.choice(['"b.c"', "'a.b'", '""', "''", '"a"', "'x'"])
        if k < 0.86:
            return self.basic_string()
        if k < 0.92:
            return self.literal_string()
        if k < 0.96:
            return self.key() + r.choice([".", " . "]) + self.key()  # a dotted key: outside the subset
        return self.key() if self.clean else r.choice(["é", "a b", "=", "[x]", "#"])

    def table_name(self):
        r = self.r
        k = r.random()
        if k < 0.75:
            return r.choice([".", " . ", "."]).join(r.choice(NAMES) for _ in range(r.randint(1, 3)))
        if k < 0.85:
            return r.choice(['"q"', "'lit'", '"a"', "'b'", '"é"', '""', '"a.b"', "b.'c'", 'a.""', "a.''.b", '"".a'])
        if self.clean:
            return r.choice(NAMES)
        return r.choice(["a.", ".a", "a..b", "a b", "", "é"] + [self.key()])

    def line(self, names):
        r = self.r
        k = r.random()
        if k < 0.55:
            equals = r.choice([" == ", " ", ":"]) if self.maybe(0.1) else r.choice([" = ", "=", " =", "\t=\t"])
            out = self.key() + equals + self.value()
        elif k < 0.75:
            name = r.choice(names) if names and r.random() < 0.2 else self.table_name()
            names.append(name)
            open_, close = r.choice([("[", "]"), ("[", "]"), ("[ ", " ]"), ("[[", "]]")])
            if self.maybe(0.1):
                close = r.choice(["", "]]", " ] ]"])
            out = open_ + name + close
        elif k < 0.85:
            out = "#" + "".join(self.char("") for _ in range(r.randint(0, 6)))
        else:
            out = r.choice(["", "", " ", "\t"])
        if r.random() < 0.15:
            out += r.choice([" # \x01", " x", " = 1", " ,"]) if self.maybe(0.5) else r.choice([" # trailing", "#"])
        return out


MUTATION_BYTES = list('=[]"\'#\n\r\t ,.\\{}_+-0e') + ["\x00", "\x7f", "é", "\ufeff", "\x0c"]


def document(r):
    g = Gen(r, clean=r.random() < 0.45)
    names = []
    lines = [g.line(names) for _ in range(r.randint(1, 8))]
    text = "".join(line + r.choice(["\n", "\n", "\n", "\r\n"]) for line in lines)
    if r.random() < 0.1:
        text = text.rstrip("\n")  # no final newline
    if not g.clean and r.random() < 0.4:
        text = mutate_chars(r, text, MUTATION_BYTES)
    data = text.encode("utf-8", "surrogatepass")
    if not g.clean and r.random() < 0.03:
        data += r.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])
    if r.random() < 0.01:
        data = b"\xef\xbb\xbf" + data  # a byte order mark: ours skips it, tomllib does not (compared without)
    return data


# ---- comparison ---------------------------------------------------------------------------------

def flatten(doc, path=(), leaves=None, tables=None):
    """tomllib's nested dict as {(table path, key): value} and the set of table paths."""
    if leaves is None:
        leaves, tables = {}, set()
    tables.add(path)
    for k, v in doc.items():
        if isinstance(v, dict):
            flatten(v, path + (k,), leaves, tables)
        else:
            leaves[(path, k)] = v
    return leaves, tables


def same(tag, theirs):
    kind, v = tag
    if kind == "s":
        return isinstance(theirs, str) and theirs == v
    if kind == "b":
        return isinstance(theirs, bool) and theirs == v
    if kind == "i":
        return isinstance(theirs, int) and not isinstance(theirs, bool) and theirs == int(v)
    if kind == "f":
        if not isinstance(theirs, float):
            return False
        ours = float(v)
        if math.isnan(ours) or math.isnan(theirs):
            return math.isnan(ours) and math.isnan(theirs)
        return ours == theirs and math.copysign(1, ours) == math.copysign(1, theirs)
    if kind == "a":
        return isinstance(theirs, list) and len(theirs) == len(v) and all(same(a, b) for a, b in zip(v, theirs))
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="test_engine_io (its [.toml-oracle] case)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--count", type=int, default=30000)
    ap.add_argument("--seed", type=int, default=20261207)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    r = random.Random(args.seed)
    docs = [document(r) for _ in range(args.count)]
    # Hand-picked documents beside the random ones: each kind of case at least once.
    docs += [b"a = 1\n[t]\nb = 'x'\n", b"a = 1979-05-27\n", b"a = {b = 1}\n", b"[[t]]\n", b"a.b = 1\n",
             b'a = """x"""\n', b"a = 9223372036854775808\n", b"a = 1e400\n", b"a = [1, [2, 'x'], ]\n",
             b"a = 1\na = 2\n", b"a = 01\n", b"a = \"\\uD800\"\n", b"[a]\n[a]\n", b"a = +nan\nb = -0.0\n"]
    problems, ours = answer_cases(args.bin, "[.toml-oracle]", "BERT_TOML_CASES", "BERT_TOML_OUT", args.work, docs)
    check(not problems, f"test_engine_io [.toml-oracle] answered every document: {problems}")
    if len(ours) != len(docs):
        sys.exit(1)

    import json
    counts = {"both read": 0, "both refuse": 0, "not supported": 0}
    shown = 0
    for i, (data, result) in enumerate(zip(docs, ours)):
        try:
            theirs = tomllib.loads(data.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            theirs = e
        problem = None
        if result.startswith("ok "):
            if isinstance(theirs, Exception):
                problem = f"we read what tomllib refuses ({theirs})"
            else:
                leaves, table_paths = flatten(theirs)
                mine = json.loads(result[3:])
                my_leaves = {}
                my_tables = {()}
                for name, entries in mine.items():
                    path = tuple(name.split(".")) if name else ()
                    for n in range(1, len(path) + 1):
                        my_tables.add(path[:n])  # [a.b] makes a too
                    for k, v in entries.items():
                        my_leaves[(path, k)] = v
                if set(my_leaves) != set(leaves) or my_tables != table_paths:
                    problem = f"other keys or tables: ours {sorted(my_leaves)} / theirs {sorted(leaves)}"
                else:
                    bad = [k for k in leaves if not same(my_leaves[k], leaves[k])]
                    if bad:
                        problem = f"other values at {bad[0]}: ours {my_leaves[bad[0]]}, theirs {leaves[bad[0]]!r}"
                    else:
                        counts["both read"] += 1
        else:
            message = result[len("error "):]
            if not message.startswith("run.toml:") or not message.split(":")[1].isdigit():
                problem = f"our error does not start with run.toml:LINE: {message}"
            elif isinstance(theirs, Exception):
                counts["both refuse"] += 1
            elif any(phrase in message for phrase in NOT_SUPPORTED):
                counts["not supported"] += 1
            else:
                problem = f"we refuse what tomllib reads ({message})"
        if problem:
            FAILURES.append(problem)
            if shown < 25:
                shown += 1
                print(f"FAIL document {i} {data!r}: {problem}", flush=True)
    check(not FAILURES, f"{len(docs)} documents: ours and tomllib agree on every one")
    print(f"  {counts['both read']} read alike, {counts['both refuse']} refused by both, "
          f"{counts['not supported']} refused by us as outside the subset")
    # The generator must exercise every outcome substantially, or the test says little.
    check(counts["both read"] > len(docs) // 10 and counts["both refuse"] > len(docs) // 4
          and counts["not supported"] > 100, f"every outcome is exercised: {counts}")
    print(f"\n{'FAILED' if FAILURES else 'OK'}: {len(FAILURES)} failure(s)")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
