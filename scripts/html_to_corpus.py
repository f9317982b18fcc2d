#!/usr/bin/env python3
"""Convert (Korean) help-page HTML files into a BERT pretraining corpus.

Output format (the usual BERT NSP input format):
  * one sentence per line,
  * one blank line between documents (one document = one HTML page),
  * no empty documents, no leading/trailing whitespace on any line.

Pipeline (all deterministic; input files are sorted by path):
  1. Parse each page with html.parser (stdlib only).  Only the main content is
     used: <div id="DisplayArea"> when the page has one, otherwise <body>.
     script/style/head/header/footer/nav/aside/pre/code blocks, "how to get
     there" menu boxes, "related topics" link lists, OS-specific variants
     (MAC/WIN/UNIX) and blocks that consist only of a link are dropped.
  2. Each text block is whitespace-collapsed (entities are already unescaped
     by html.parser) and split into sentences with a small Korean-aware rule.
  3. Sentences that occur in many documents (navigation bars, headers,
     "도움말"-style boilerplate, copyright footers, ...) are dropped.
  4. Sentences without enough Hangul are dropped; pages whose text is mostly
     non-Korean or that keep fewer than --min-sentences sentences are skipped.
  5. If the result is larger than --cap-threshold bytes, documents are taken
     in path order until --max-bytes is reached.

Usage:
  html_to_corpus.py [options] PATH [PATH ...]   (PATH = file or directory)
  html_to_corpus.py -o corpus.txt /usr/share/libreoffice/help/ko
"""

import argparse
import gzip
import os
import re
import sys
from collections import Counter
from html.parser import HTMLParser

HTML_SUFFIXES = (".html", ".htm", ".xhtml", ".xhp")

VOID_TAGS = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link",
    "meta", "param", "source", "track", "wbr", "keygen",
}
# Elements whose whole subtree is never corpus text.
SKIP_TAGS = {
    "script", "style", "noscript", "head", "header", "footer", "nav", "aside",
    "pre", "svg", "math", "button", "form", "select", "option", "textarea",
    "template", "iframe", "object", "label", "title",
}
# Elements (by class) whose whole subtree is navigation / code / boilerplate.
SKIP_CLASSES = {
    "howtoget", "relatedtopics", "relatedbody", "related", "debug",
    "bascode", "pycode", "code", "codeintable", "smathcode",
    "contents-treeview", "index", "index-label", "dropdowns", "modules",
    "search", "breadcrumb", "navigation", "nav", "menu", "footer", "header",
    "copyright", "screenshot",
}
SKIP_IDS = {"TopLeftHeader", "SearchFrame", "DonationFrame", "DEBUG",
            "Contents", "Index", "Bookmarks", "navigation", "footer"}
# Operating-system specific alternatives (<span hidden class="MAC">...).
OS_VARIANT_CLASSES = {"MAC", "WIN", "UNIX"}
# Tags that start/end a text block (a "paragraph" for sentence splitting).
BLOCK_TAGS = {
    "p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "ul", "ol", "dl",
    "dt", "dd", "table", "thead", "tbody", "tfoot", "tr", "td", "th",
    "caption", "section", "article", "main", "blockquote", "br", "hr",
    "body", "html", "figure", "figcaption", "center", "address",
    # LibreOffice .xhp source tags
    "paragraph", "title", "tablecell", "tablerow", "listitem", "section",
    "bookmark_value", "h", "embed",
}

HANGUL_RE = re.compile(r"[\uac00-\ud7a3]")  # Hangul syllables
LATIN_RE = re.compile(r"[A-Za-z]")
WS_RE = re.compile(r"\s+")
INVISIBLE_RE = re.compile(r"[\u200b-\u200d\u2060\ufeff\u00ad]")

# Sentence boundary candidates: terminal punctuation (optionally followed by
# closing quotes/brackets) followed by whitespace.
BOUNDARY_RE = re.compile(r"[.?!。？！…]+[\"'”’»)\]」』]*(?=\s)")
ABBREVIATIONS = {
    "e.g", "i.e", "etc", "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st",
    "vs", "cf", "fig", "figs", "no", "nos", "vol", "pp", "approx", "incl",
    "ca", "resp", "inc", "ltd", "co", "corp", "dept", "est", "al", "ex",
    "min", "max", "ver", "op", "eq", "ref", "sec", "ch",
}


def read_text(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    return data.decode("utf-8", errors="replace")


def norm_ws(s):
    return WS_RE.sub(" ", INVISIBLE_RE.sub("", s)).strip()


class HelpPageParser(HTMLParser):
    """Collects text blocks from one page, skipping boilerplate subtrees."""

    def __init__(self, main_id=None):
        super().__init__(convert_charrefs=True)
        self.main_id = main_id      # only collect inside element with this id
        self.stack = []             # [tag, skip, is_main, switch_kind]
        self.skip_depth = 0         # number of open skipping elements
        self.main_depth = 0         # number of open "main" elements
        self.link_depth = 0         # number of open <a href=...> elements
        self.blocks = []            # list of text blocks
        self.buf = []
        self.buf_has_nonlink = False

    # -- block handling -------------------------------------------------
    def _flush(self):
        if self.buf:
            text = norm_ws("".join(self.buf))
            # A block made only of link text is a navigation / "see also"
            # entry (e.g. list of related pages), not running text.
            if text and self.buf_has_nonlink:
                self.blocks.append(text)
        self.buf = []
        self.buf_has_nonlink = False

    def _collecting(self):
        return self.skip_depth == 0 and (self.main_id is None or self.main_depth > 0)

    # -- parser callbacks -------------------------------------------------
    def handle_starttag(self, tag, attrs):
        tag = tag.lower()
        if tag in BLOCK_TAGS:
            self._flush()
        if tag in VOID_TAGS:
            return
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        elem_id = a.get("id") or ""
        parent_switch = self.stack[-1][3] if self.stack else None

        skip = (
            tag in SKIP_TAGS
            or bool(classes & SKIP_CLASSES)
            or elem_id in SKIP_IDS
            or a.get("aria-hidden") == "true"
        )
        if "hidden" in a:
            if classes & OS_VARIANT_CLASSES:
                skip = True  # OS-specific duplicate of the default text
            elif parent_switch == "switchinline" and not elem_id.startswith("default"):
                skip = True  # inline alternatives: keep only the default one
        is_main = self.main_id is not None and elem_id == self.main_id
        switch_kind = None
        if "switchinline" in classes:
            switch_kind = "switchinline"
        elif "switch" in classes:
            switch_kind = "switch"
        is_link = tag == "a" and "href" in a

        self.stack.append((tag, skip, is_main, switch_kind, is_link))
        if skip:
            self.skip_depth += 1
        if is_main:
            self.main_depth += 1
        if is_link:
            self.link_depth += 1

    def handle_startendtag(self, tag, attrs):
        tag = tag.lower()
        if tag in BLOCK_TAGS:
            self._flush()

    def handle_endtag(self, tag):
        tag = tag.lower()
        if tag in BLOCK_TAGS:
            self._flush()
        if tag in VOID_TAGS:
            return
        # Pop up to the matching open tag (tolerates unclosed children);
        # stray end tags with no matching open tag are ignored.
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                break
        else:
            return
        while len(self.stack) > i:
            _, skip, is_main, _, is_link = self.stack.pop()
            if skip:
                self.skip_depth -= 1
            if is_main:
                self.main_depth -= 1
            if is_link:
                self.link_depth -= 1

    def handle_data(self, data):
        if not self._collecting():
            return
        self.buf.append(data)
        if self.link_depth == 0 and data.strip():
            self.buf_has_nonlink = True

    def close(self):
        super().close()
        self._flush()


def extract_blocks(html):
    main_id = "DisplayArea" if re.search(r'id\s*=\s*["\']DisplayArea["\']', html) else None
    p = HelpPageParser(main_id=main_id)
    p.feed(html)
    p.close()
    return p.blocks


def _is_abbrev_or_number(token, punct):
    """token = text between previous whitespace and the terminal punctuation."""
    if not punct.startswith("."):
        return False
    t = token.lstrip("(\"'“‘[«「『")
    low = t.lower()
    if low in ABBREVIATIONS or low.rstrip(".") in ABBREVIATIONS:
        return True
    if re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", t):   # e.g, i.e, U.S
        return True
    if re.fullmatch(r"[A-Za-z]", t):                 # initials: "J. Smith"
        return True
    if re.fullmatch(r"\d{1,3}", t) and punct == ".":   # list numbering "1. "
        return True
    return False


DOUBLE_DOT_RE = re.compile(r"(?<![.])\.\.(?![.])")


def split_sentences(text):
    """Split a whitespace-normalised paragraph into sentences.

    Splits after . ? ! (and CJK/ellipsis variants, plus closing quotes) when
    followed by whitespace.  Because whitespace is required, decimal numbers
    (3.14), version strings, file names (.odt) and URLs are never split.
    Not split after common abbreviations (e.g. i.e. etc. Mr. vs. ...), single
    initials, short list numbers ("1. "), or when the next word starts with a
    lowercase Latin letter (an English sentence cannot start that way).
    """
    out = []
    start = 0
    for m in BOUNDARY_RE.finditer(text):
        end = m.end()
        punct = m.group(0)
        ws = text.rfind(" ", start, m.start())
        token = text[ws + 1:m.start()] if ws >= start else text[start:m.start()]
        if _is_abbrev_or_number(token, punct):
            continue
        nxt = text[end:].lstrip()[:1]
        if nxt and "a" <= nxt <= "z":
            continue
        if "://" in token and not punct.startswith("."):
            continue  # '?' inside/after a URL
        sent = DOUBLE_DOT_RE.sub(".", text[start:end].strip())
        if sent:
            out.append(sent)
        start = end
    tail = DOUBLE_DOT_RE.sub(".", text[start:].strip())
    if tail:
        out.append(tail)
    return out


def keep_sentence(s, min_hangul):
    """A line is kept if it is (mostly) Korean running text."""
    h = len(HANGUL_RE.findall(s))
    if h < min_hangul:
        return False
    tokens = s.split()
    # Single-word lines ("삭제", "이름", "파일") are table cells / UI labels.
    if len(tokens) < 2 and len(s) < 10:
        return False
    # Section labels such as "구문:", "반환 값:", "매개 변수:".
    if s.endswith(":") and len(tokens) <= 3:
        return False
    lat = len(LATIN_RE.findall(s))
    # Mixed lines such as "LibreOffice에서 Java 애플릿을 실행합니다." are fine,
    # but drop English sentences with a stray Korean word in them.
    if h < 0.25 * (h + lat):
        return False
    # Lines that are mostly symbols/digits (tables of values, formulas).
    if h + lat < 0.5 * len(s.replace(" ", "")):
        return False
    return True


def list_inputs(paths):
    files = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p):
                dirs.sort()
                for n in names:
                    base = n[:-3] if n.endswith(".gz") else n
                    if base.lower().endswith(HTML_SUFFIXES):
                        files.append(os.path.join(root, n))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise SystemExit(f"html_to_corpus.py: error: no such file or directory: {p}")
    return sorted(set(files))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help="HTML files and/or directories")
    ap.add_argument("--files-from", metavar="FILE",
                    help="read additional input paths (one per line) from FILE")
    ap.add_argument("-o", "--output", default="-", help="output file (default: stdout)")
    ap.add_argument("--min-sentences", type=int, default=3,
                    help="skip documents with fewer kept sentences (default 3)")
    ap.add_argument("--min-hangul", type=int, default=2,
                    help="min Hangul syllables for a line to be kept (default 2)")
    ap.add_argument("--min-korean-ratio", type=float, default=0.5,
                    help="skip pages where less than this fraction of the "
                         "(non-boilerplate) lines are kept as Korean (default 0.5)")
    ap.add_argument("--repeat-frac", type=float, default=0.01,
                    help="drop lines occurring in more than this fraction of "
                         "documents (default 0.01)")
    ap.add_argument("--repeat-min-docs", type=int, default=10,
                    help="...but only if they occur in at least this many "
                         "documents (default 10)")
    ap.add_argument("--max-bytes", type=int, default=5_000_000,
                    help="size to cap at when capping (default 5000000)")
    ap.add_argument("--cap-threshold", type=int, default=8_000_000,
                    help="only cap if the full corpus exceeds this many bytes "
                         "(default 8000000); 0 = always cap at --max-bytes")
    args = ap.parse_args(argv)

    paths = list(args.paths)
    if args.files_from:
        with open(args.files_from, encoding="utf-8") as f:
            paths += [ln.strip() for ln in f if ln.strip()]
    if not paths:
        ap.error("no input paths given")
    files = list_inputs(paths)
    if not files:
        raise SystemExit("html_to_corpus.py: error: no HTML files found in input")

    # 1+2: extract and split.
    docs = []  # (path, [sentences], korean_ratio)
    for path in files:
        try:
            html = read_text(path)
        except OSError as e:
            raise SystemExit(f"html_to_corpus.py: error: cannot read {path}: {e}")
        sents = []
        for block in extract_blocks(html):
            sents.extend(split_sentences(block))
        docs.append((path, sents))

    # 3: document frequency of each line -> boilerplate detection.
    df = Counter()
    for _, sents in docs:
        df.update(set(sents))
    n_docs_in = len(docs)
    repeat_limit = max(args.repeat_min_docs, int(args.repeat_frac * n_docs_in))
    boiler = {s for s, c in df.items() if c >= repeat_limit}

    # 4: filter lines and documents.
    out_docs = []
    skipped_lang = skipped_short = 0
    for path, sents in docs:
        seen = set()
        kept = []
        n_content = 0  # distinct non-boilerplate lines
        for s in sents:
            if s in boiler or s in seen:
                continue
            seen.add(s)
            n_content += 1
            if keep_sentence(s, args.min_hangul):
                kept.append(s)
        # "Mostly non-Korean" page: too few of its lines are Korean text
        # (many pages are only partly translated and fall back to English).
        if not n_content or len(kept) / n_content < args.min_korean_ratio:
            skipped_lang += 1
            continue
        if len(kept) < args.min_sentences:
            skipped_short += 1
            continue
        out_docs.append((path, kept))

    # 5: deterministic cap (documents in path order).
    def doc_bytes(kept):
        return sum(len(s.encode("utf-8")) + 1 for s in kept) + 1  # + blank line

    total = sum(doc_bytes(k) for _, k in out_docs) - (1 if out_docs else 0)
    capped = False
    if args.max_bytes > 0 and total > (args.cap_threshold or args.max_bytes):
        acc = 0
        for i, (_, kept) in enumerate(out_docs):
            acc += doc_bytes(kept)
            if acc >= args.max_bytes:
                out_docs = out_docs[: i + 1]
                capped = True
                break

    text = "\n\n".join("\n".join(kept) for _, kept in out_docs)
    text = text + "\n" if text else text
    if args.output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with open(args.output, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)

    n_lines = sum(len(k) for _, k in out_docs)
    n_hangul = sum(1 for _, k in out_docs for s in k if HANGUL_RE.search(s))
    print(
        f"html_to_corpus: {len(files)} files, {n_docs_in} parsed, "
        f"{len(boiler)} boilerplate lines (in >= {repeat_limit} docs) removed, "
        f"{skipped_lang} docs skipped (non-Korean), {skipped_short} skipped "
        f"(< {args.min_sentences} sentences); wrote {len(out_docs)} documents, "
        f"{n_lines} lines, {len(text.encode('utf-8'))} bytes, "
        f"{(n_hangul / n_lines if n_lines else 0):.3f} of lines with Hangul"
        + (f" (capped at ~{args.max_bytes} bytes from {total})" if capped else ""),
        file=sys.stderr,
    )
    if not out_docs:
        raise SystemExit("html_to_corpus.py: error: no documents survived filtering")
    return 0


if __name__ == "__main__":
    sys.exit(main())
