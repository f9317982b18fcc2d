#!/usr/bin/env python3
"""Makes a large training corpus for scale tests: the demo corpus repeated until SIZE bytes, each line
salted with a random Hangul word so the number of distinct words keeps growing (~1 new word per
line), as a real corpus's long tail does. Deterministic. Usage: make_big_corpus.py IN OUT SIZE_MB"""
import random
import sys

src, dst, size_mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = [l for l in open(src, encoding="utf-8").read().split("\n") if l.strip()]
rng = random.Random(0)
target = size_mb * 1_000_000
written = 0
with open(dst, "w", encoding="utf-8") as out:
    while written < target:
        chunk = []
        for line in lines:
            word = "".join(chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(rng.randint(2, 4)))
            chunk.append(f"{line} {word}\n")
        text = "".join(chunk)
        out.write(text)
        written += len(text.encode("utf-8"))
print(f"{dst}: {written / 1e6:.0f} MB")
