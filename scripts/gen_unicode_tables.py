#!/usr/bin/env python3
"""Generate tokenizer/unicode_tables.inc: the character classes and per-character mappings that
Hugging Face's BertNormalizer / BertPreTokenizer apply.

Why probe instead of reading the UCD: `tokenizers` takes its categories from the Rust crate
`unicode_categories` (an old Unicode version: e.g. U+166D and U+111C9 are still punctuation there,
and unassigned code points are NOT treated as "other"), its NFD from `unicode-normalization-alignments`,
and lowercase/whitespace from Rust's std (a newer version). No single UCD version reproduces that mix,
so we ask the pinned `tokenizers` itself what it does with every code point, one character at a time,
and record the answer: the classes, the lowercase mapping, and for strip_accents (NFD of the whole
string, then drop Mn) each character's NFD, whether it is Mn, and whether NFD's canonical reordering
treats it as a non-starter (its class as that older Unicode has it: about 100 marks Python's
unicodedata gives a class are still starters there, and a dropped Mn starter still blocks reordering). tests/conformance re-runs this comparison against the installed package.

Usage: python3 scripts/gen_unicode_tables.py > tokenizer/unicode_tables.inc
"""
import sys
import unicodedata

import tokenizers
from tokenizers.normalizers import NFD, BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3


def all_code_points():
    return [c for c in range(0x110000) if not (0xD800 <= c <= 0xDFFF)]


def ranges(cps):
    out = []
    for c in sorted(cps):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def hangul_nfd(cp):
    s = cp - HANGUL_FIRST
    l, v, t = 0x1100 + s // 588, 0x1161 + (s % 588) // 28, 0x11A7 + s % 28
    return [l, v] + ([t] if t != 0x11A7 else [])


def probe():
    cps = all_code_points()
    chars = [chr(c) for c in cps]
    clean = BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False)
    strip = BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=True, lowercase=False)
    lower = BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=False, lowercase=True)
    nfd = NFD()
    pre = BertPreTokenizer()

    control, whitespace, punct, split_ws, nonspacing, non_starters = [], [], [], [], [], []
    decomposition, lower_map = {}, {}
    for c, ch in zip(cps, chars):
        o = clean.normalize_str(ch)
        if o == "":
            control.append(c)
        elif o == " " and ch != " ":
            whitespace.append(c)
        elif o != ch:
            raise SystemExit(f"unexpected clean_text output for U+{c:04X}: {o!r}")
        if ch == " ":
            whitespace.append(c)
        pieces = pre.pre_tokenize_str("a" + ch + "b")
        if len(pieces) == 2 and pieces[0][0] == "a" and pieces[1][0] == "b":
            split_ws.append(c)
        elif len(pieces) == 3 and pieces[1][0] == ch:
            punct.append(c)
        elif not (len(pieces) == 1 and pieces[0][0] == "a" + ch + "b"):
            raise SystemExit(f"unexpected pre-tokenizer output for U+{c:04X}: {pieces!r}")
        d = nfd.normalize_str(ch)
        if d != ch:
            seq = [ord(x) for x in d]
            if HANGUL_FIRST <= c <= HANGUL_LAST:
                if seq != hangul_nfd(c):
                    raise SystemExit(f"Hangul U+{c:04X} does not decompose algorithmically: {d!r}")
            else:
                decomposition[c] = seq
        else:
            # strip_accents drops a character NFD leaves alone exactly when it is Mn.
            s = strip.normalize_str(ch)
            if s == "":
                nonspacing.append(c)
            elif s != ch:
                raise SystemExit(f"unexpected strip_accents output for U+{c:04X}: {s!r}")
            # A non-starter between two marks of classes 230 and 220 keeps NFD from leaving them as
            # they are (whatever its own class, the run is not sorted); a starter blocks the sort.
            probe_run = "\u0301" + ch + "\u0316"
            if nfd.normalize_str(probe_run) != probe_run:
                non_starters.append(c)
        lw = lower.normalize_str(ch)
        if lw != ch:
            lower_map[c] = [ord(x) for x in lw]
    # clean_text drops controls before mapping whitespace, so U+000B, U+000C and U+0085 (controls
    # that Rust also calls whitespace) vanish there but still split words in the pre-tokenizer.
    if sorted(set(whitespace)) != sorted(set(split_ws) - set(control)):
        raise SystemExit("clean_text whitespace is not pre-tokenizer whitespace minus controls")
    # strip_accents = NFD of the whole string, then drop Mn: true of every character on its own.
    dropped = set(nonspacing)
    for c, seq in decomposition.items():
        if strip.normalize_str(chr(c)) != "".join(chr(x) for x in seq if x not in dropped):
            raise SystemExit(f"strip_accents of U+{c:04X} is not its NFD without Mn")
    # Canonical combining classes as HF's NFD (an older Unicode than Python's) has them. A class, once
    # assigned, never changes (Unicode's stability policy), so Python names the value of every
    # non-starter HF knows; characters newer than HF's tables are starters there, and are left out.
    ccc = {c: unicodedata.combining(chr(c)) for c in non_starters}
    unknown = [c for c, k in ccc.items() if k == 0]
    if unknown:
        raise SystemExit(f"HF's NFD reorders U+{unknown[0]:04X}, a starter for Python's unicodedata "
                         f"{unicodedata.unidata_version}: use a Python with newer Unicode data")
    # Check the values against NFD itself: each non-starter beside one of every class moves exactly
    # when the classes say it must.
    representative = {}
    for c in sorted(ccc):
        representative.setdefault(ccc[c], c)
    for c, k in ccc.items():
        for v, r in representative.items():
            for first, second, must_swap in ((c, r, k > v), (r, c, v > k)):
                pair = chr(first) + chr(second)
                if (nfd.normalize_str(pair) != pair) != must_swap:
                    raise SystemExit(f"HF's NFD orders U+{first:04X} U+{second:04X} against their classes "
                                     f"({ccc[first]}, {ccc[second]})")
    return control, sorted(split_ws), punct, decomposition, nonspacing, lower_map, ccc


def emit_ranges(name, rs):
    print(f"inline constexpr CodePointRange {name}[] = {{")
    for i in range(0, len(rs), 6):
        print("    " + " ".join(f"{{0x{a:X}, 0x{b:X}}}," for a, b in rs[i:i + 6]))
    print("};")


def emit_map(name, m):
    pool, entries = [], []
    for c in sorted(m):
        entries.append((c, len(pool), len(m[c])))
        pool.extend(m[c])
    print(f"inline constexpr char32_t {name}_pool[] = {{")
    for i in range(0, len(pool), 10):
        print("    " + " ".join(f"0x{x:X}," for x in pool[i:i + 10]))
    if not pool:
        print("    0,")
    print("};")
    print(f"inline constexpr CodePointMapping {name}[] = {{")
    for i in range(0, len(entries), 5):
        print("    " + " ".join(f"{{0x{c:X}, {o}, {n}}}," for c, o, n in entries[i:i + 5]))
    print("};")


def main():
    control, whitespace, punct, decomposition, nonspacing, lower_map, ccc = probe()
    print("// Generated by scripts/gen_unicode_tables.py from tokenizers "
          f"{tokenizers.__version__} (combining class values named by Python's unicodedata).")
    print("// Do not edit by hand. Included by tokenizer/unicode.cpp only.")
    print(f'inline constexpr const char* kTablesFromTokenizersVersion = "{tokenizers.__version__}";')
    emit_ranges("kControlRanges", ranges(control))
    emit_ranges("kWhitespaceRanges", ranges(whitespace))
    emit_ranges("kPunctuationRanges", ranges(punct))
    emit_map("kDecompositionMap", decomposition)
    emit_ranges("kNonspacingRanges", ranges(nonspacing))
    emit_map("kLowercaseMap", lower_map)
    print("inline constexpr CombiningClass kCombiningClasses[] = {")
    items = sorted(ccc.items())
    for i in range(0, len(items), 8):
        print("    " + " ".join(f"{{0x{c:X}, {k}}}," for c, k in items[i:i + 8]))
    print("};")
    print(f"// control {len(control)}, whitespace {len(whitespace)}, punctuation {len(punct)}, "
          f"decomposition {len(decomposition)}, nonspacing {len(nonspacing)}, lowercase {len(lower_map)}, "
          f"combining {len(ccc)}", file=sys.stderr)


if __name__ == "__main__":
    main()
