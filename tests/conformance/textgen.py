"""Deterministic stress text for tokenizer conformance: every script and edge case the encoder
must agree with Hugging Face on. Lines never contain '\n' (callers join with '\n' and split on it;
never use str.splitlines, which also splits on U+0085 and U+2028)."""
import random
import unicodedata

HANGUL = (0xAC00, 0xD7A3)
CJK = (0x4E00, 0x9FFF)
CJK_EXT_B = (0x20000, 0x2A6DF)
EMOJI = [(0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F900, 0x1F9FF), (0x1FA70, 0x1FAFF), (0x2600, 0x26FF)]
CONTROL_AND_INVISIBLE = ["\u200b", "\u200c", "\u200d", "\ufeff", "\u00ad", "\u2028", "\u2029", "\u0085", "\x00",
                         "\x01", "\x07", "\x0b", "\x0c", "\x1b", "\x7f", "\x9f", "\ufffd", "\u202e", "\u2066",
                         "\ue000", "\U000f0000", "\t", "\r", "\u3000", "\u00a0", "\u2003", "\u180e", "\u0600"]
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + list("。、「」『』《》〈〉【】〔〕…‥·ㆍ※〃“”‘’–—―¡¿§¶†‡•′″‼⁇⁈⁉")
SYMBOLS = list("₩€£¥©®™°±×÷←→↑↓∀∂∃∅∇∈∑√∞≈≠≤≥⊂⊃")
LATIN_ACCENTED = "àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖØÙÚÛÜÝÞßİıŁłŒœŠšŸŽžǅǈǋ"
GREEK_CYRILLIC = "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩαβγδεζηθικλμνξοπρςστυφχψωάέήίόύώΐΰЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯабвгдежзийклмнопрстуфхцчшщъыьэюяё"
COMBINING = ["\u0300", "\u0301", "\u0302", "\u0303", "\u0308", "\u030a", "\u0323", "\u0327", "\u0345", "\u05b0",
             "\u0e48", "\u302e", "\u302f", "\u1d165"[:1] if False else "\U0001d165", "\U0001d16d", "\u0f39", "\u093c"]
WORDS_EN = ("the quick brown fox jumps over lazy dog tokenizer BERT pretraining corpus Seoul Korea law finance "
            "patent comment model GPU kernel attention LayerNorm GELU AdamW unbelievably internationalization "
            "McDonald's can't won't e.g. i.e. U.S.A. 3.14 1,000,000 2026-11-25 v1.2.3 http://example.com/a?b=c "
            "user@example.com C++ C# .NET node.js ÉCOLE naïve café Straße İstanbul ΣΊΣΥΦΟΣ").split()
SPECIALS = ["[MASK]", "[UNK]", "[CLS]", "[SEP]", "[PAD]", "[mask]", "[MASK", "MASK]", "[[MASK]]"]


def rand_range(rng, lo_hi):
    return chr(rng.randint(*lo_hi))


def hangul_word(rng, n):
    return "".join(rand_range(rng, HANGUL) for _ in range(n))


def random_code_point(rng):
    while True:
        c = rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0x2FFF), rng.randint(0x3000, 0xFFFF),
                        rng.randint(0x10000, 0x3FFFF), rng.randint(0xE0000, 0x10FFFF)])
        if not (0xD800 <= c <= 0xDFFF) and c != 0x0A:
            return chr(c)


def generated_lines(rng, corpus_lines):
    out = []
    words_ko = [w for line in corpus_lines for w in line.split()] or [hangul_word(rng, 3)]

    def ko_sentence(k=None):
        return " ".join(rng.choice(words_ko) for _ in range(k or rng.randint(3, 15)))

    for _ in range(1500):  # English
        out.append(" ".join(rng.choice(WORDS_EN) for _ in range(rng.randint(3, 20))))
    for _ in range(1500):  # Hanja mixed into Korean (incl. compatibility ideographs and ext. B)
        parts = []
        for _ in range(rng.randint(3, 12)):
            r = rng.random()
            if r < 0.4:
                parts.append("".join(rand_range(rng, CJK) for _ in range(rng.randint(1, 4))))
            elif r < 0.5:
                parts.append(rand_range(rng, (0xF900, 0xFAFF)) + rand_range(rng, CJK_EXT_B))
            else:
                parts.append(rng.choice(words_ko))
        out.append(rng.choice([" ", ""]).join(parts))
    for _ in range(1500):  # mixed scripts
        pool = [ko_sentence(2), rng.choice(WORDS_EN), "".join(rng.sample(LATIN_ACCENTED, 5)),
                "".join(rng.sample(GREEK_CYRILLIC, 6)), rand_range(rng, CJK) * 2, "日本語テキスト", "ภาษาไทย",
                "العربية", "עברית", "हिन्दी", rng.choice(SYMBOLS) * 3]
        out.append(" ".join(rng.choice(pool) for _ in range(rng.randint(2, 8))))
    for _ in range(1500):  # emoji, ZWJ sequences, skin tones, flags, keycaps
        parts = []
        for _ in range(rng.randint(1, 10)):
            e = rand_range(rng, rng.choice(EMOJI))
            r = rng.random()
            if r < 0.2:
                e += "\u200d" + rand_range(rng, rng.choice(EMOJI))
            elif r < 0.3:
                e += chr(rng.randint(0x1F3FB, 0x1F3FF))
            elif r < 0.4:
                e = chr(rng.randint(0x1F1E6, 0x1F1FF)) + chr(rng.randint(0x1F1E6, 0x1F1FF))
            elif r < 0.45:
                e = rng.choice("0123456789#*") + "\ufe0f\u20e3"
            parts.append(e + rng.choice(["", " ", "\ufe0f"]))
        out.append(ko_sentence(2) + " " + "".join(parts) + " " + rng.choice(words_ko))
    for _ in range(1500):  # control, zero-width and odd whitespace
        s = list(ko_sentence())
        for _ in range(rng.randint(1, 6)):
            s.insert(rng.randint(0, len(s)), rng.choice(CONTROL_AND_INVISIBLE))
        out.append("".join(s))
    for _ in range(1000):  # very long words around the 100-character limit
        n = rng.choice([95, 99, 100, 101, 102, 150, 300, rng.randint(20, 120)])
        kind = rng.random()
        if kind < 0.4:
            w = hangul_word(rng, n)
        elif kind < 0.7:
            w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))
        else:
            w = (rng.choice(words_ko) * n)[:n]
        out.append(ko_sentence(2) + " " + w + " " + ko_sentence(2))
    for _ in range(1500):  # punctuation runs
        out.append(ko_sentence(3) + "".join(rng.choice(PUNCT) for _ in range(rng.randint(2, 30))) +
                   ko_sentence(2) + rng.choice(PUNCT) * rng.randint(2, 8))
    for _ in range(1500):  # accents and combining marks (exercise lowercase / strip_accents)
        s = []
        for _ in range(rng.randint(2, 10)):
            w = "".join(rng.choice(LATIN_ACCENTED + GREEK_CYRILLIC + "ABCXYZ") for _ in range(rng.randint(1, 8)))
            if rng.random() < 0.5:
                w += "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 3)))
            s.append(w)
        if rng.random() < 0.3:
            s.append(hangul_word(rng, 2) + rng.choice(["\u302e", "\u302f"]) + rng.choice(COMBINING))
        out.append(" ".join(s))
    # Runs of marks of every kind for strip_accents (NFD's reordering, then Mn dropped): marks that
    # survive it with a combining class, Mn starters (U+034F and the like, which stop the reordering
    # even though they are dropped), and any mark or combining character, marks newer than HF's
    # Unicode among them.
    marks = [c for c in range(0x300, 0x110000) if unicodedata.category(chr(c)) in ("Mn", "Mc", "Me")
             or unicodedata.combining(chr(c))]
    kept_classed = [c for c in marks if unicodedata.combining(chr(c)) and unicodedata.category(chr(c)) != "Mn"]
    mn_starters = [c for c in marks if unicodedata.category(chr(c)) == "Mn" and not unicodedata.combining(chr(c))]
    for _ in range(1500):
        s = []
        for _ in range(rng.randint(1, 5)):
            w = rng.choice(["a", "E", "가", "ก", "क", "α", rng.choice(LATIN_ACCENTED)])
            for _ in range(rng.randint(2, 6)):
                w += chr(rng.choice(rng.choice([kept_classed, mn_starters, marks])))
            s.append(w)
        out.append(" ".join(s))
    for _ in range(1500):  # special tokens inside and around text
        s = ko_sentence(4).split(" ")
        for _ in range(rng.randint(1, 3)):
            sp = rng.choice(SPECIALS)
            i = rng.randint(0, len(s))
            s.insert(i, sp if rng.random() < 0.5 else rng.choice(words_ko) + sp)
        out.append(" ".join(s))
    for _ in range(2000):  # arbitrary code points from every plane
        out.append("".join(random_code_point(rng) for _ in range(rng.randint(1, 40))))
    for _ in range(500):  # empty, blank and whitespace-only lines
        out.append(rng.choice(["", " ", "\t", "   ", "\u3000", "\u200b"]))
    return out


def conformance_lines(corpus_lines, seed=1234, corpus_limit=8000):
    rng = random.Random(seed)
    base = [l for l in corpus_lines if l.strip()]
    picked = base if len(base) <= corpus_limit else rng.sample(base, corpus_limit)
    lines = list(picked) + generated_lines(rng, base)
    assert all("\n" not in l for l in lines)
    return lines
