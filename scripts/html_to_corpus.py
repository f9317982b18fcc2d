#!/usr/bin/env python3
"""Convert (Korean) documentation files into a BERT pretraining corpus.

Input formats (--format, default "auto" = by file name):
  html     help pages (.html .htm .xhtml .xhp)            e.g. LibreOffice, GIMP
  mallard  GNOME Mallard help topics (.page)              /usr/share/help/ko
  docbook  DocBook XML (.docbook .xml)                    MATE, KDE, GNOME
  man      roff man pages (man*/NAME.N[.gz])              /usr/share/man/ko
  text     plain text, paragraphs separated by blank lines (tutorials)
  latex    LaTeX sources (.tex): prose only (code/math/table/verbatim dropped)
All files may be gzip-compressed (.gz); text is decoded as UTF-8, falling
back to CP949/EUC-KR.

Output format (the usual BERT NSP input format):
  * one sentence per line,
  * one blank line between documents (one document = one input file),
  * no empty documents, no leading/trailing whitespace on any line.

Pipeline (all deterministic; input files are sorted by path):
  1. Parse each page with html.parser (stdlib only).  Only the main content is
     used: <div id="DisplayArea"> when the page has one, otherwise <body>.
     script/style/head/header/footer/nav/aside/pre/code blocks, "how to get
     there" menu boxes, "related topics" link lists, OS-specific variants
     (MAC/WIN/UNIX) and blocks that consist only of a link are dropped.
     Other formats: Mallard/DocBook drop metadata, titles, code/screen
     blocks and index terms; man pages drop macros, headings, synopsis/
     see-also/author sections and no-fill blocks; LaTeX drops commands,
     math, tables, floats and code/example environments.
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
  html_to_corpus.py --format mallard --files-from pages.txt -o gnome.txt
"""

import argparse
import gzip
import os
import re
import sys
from collections import Counter
from html.entities import html5 as HTML5_ENTITIES
from html.parser import HTMLParser

HTML_SUFFIXES = (".html", ".htm", ".xhtml", ".xhp")
FORMATS = ("auto", "html", "mallard", "docbook", "man", "text", "latex")
FORMAT_SUFFIXES = {  # used when walking directories
    "html": HTML_SUFFIXES,
    "mallard": (".page",),
    "docbook": (".docbook", ".xml"),
    "text": (".txt",),
    "latex": (".tex",),
}
MAN_NAME_RE = re.compile(r"(?:^|/)man[1-9n][a-z]*/[^/]+\.[1-9n][a-z]*$")

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

# --- XML help formats (same parser, different vocabulary) ---------------------
# Mallard (GNOME .page): <info> holds credits/licence/descriptions; titles are
# headings, not sentences; <screen>/<media>/<comment>/<links> are not prose.
MALLARD_SKIP_TAGS = {
    "info", "title", "subtitle", "desc", "screen", "media", "comment", "links",
    "credit", "license", "revision", "its:rules", "if:else",
}
MALLARD_BLOCK_TAGS = {
    "page", "section", "p", "item", "list", "steps", "terms", "tree", "note",
    "figure", "listing", "example", "quote", "synopsis", "table", "tr", "td",
    "th", "thead", "tbody", "code", "screen", "title", "subtitle", "desc",
    "comment", "links", "media", "cite", "if:choose", "if:when", "if:else",
}
# <code> inside running text is an inline literal; anywhere else it is a
# code block (dropped).
MALLARD_INLINE_PARENTS = {
    "p", "title", "subtitle", "desc", "em", "span", "link", "gui", "guiseq",
    "key", "keyseq", "cmd", "file", "sys", "app", "var", "input", "output",
    "quote", "cite", "label", "td", "th",
}
DOCBOOK_SKIP_TAGS = {
    "info", "bookinfo", "articleinfo", "chapterinfo", "sectioninfo",
    "sect1info", "sect2info", "sect3info", "prefaceinfo", "appendixinfo",
    "partinfo", "refentryinfo", "refmeta", "legalnotice", "title",
    "titleabbrev", "subtitle", "screen", "programlisting", "literallayout",
    "synopsis", "cmdsynopsis", "funcsynopsis", "indexterm", "remark",
    "keywordset", "authorgroup", "author", "othercredit", "copyright",
    "revhistory", "releaseinfo", "date", "mediaobject", "inlinemediaobject",
    "screenshot", "graphic", "imageobject", "textobject", "toc", "index",
    "xi:include",
}
DOCBOOK_BLOCK_TAGS = {
    "book", "part", "chapter", "preface", "appendix", "article", "section",
    "sect1", "sect2", "sect3", "sect4", "sect5", "simplesect", "refentry",
    "refnamediv", "refpurpose", "refsect1", "refsect2", "refsect3",
    "refsynopsisdiv", "para", "simpara", "formalpara", "itemizedlist",
    "orderedlist", "variablelist", "varlistentry", "listitem", "term",
    "simplelist", "member", "informaltable", "table", "tgroup", "thead",
    "tbody", "row", "entry", "note", "tip", "warning", "caution", "important",
    "glossary", "glossdiv", "glossentry", "glossterm", "glossdef", "procedure",
    "step", "substeps", "example", "informalexample", "qandaset", "qandaentry",
    "question", "answer", "blockquote", "abstract", "highlights", "figure",
    "caption", "sidebar", "bridgehead", "calloutlist", "callout",
    "segmentedlist", "seglistitem", "seg", "title", "subtitle", "screen",
    "programlisting", "literallayout", "synopsis", "cmdsynopsis",
}
# Menu paths and key combinations: <guiseq><gui>A</gui><gui>B</gui></guiseq>
# is rendered "A ▸ B", <keyseq><key>Ctrl</key><key>C</key></keyseq> "Ctrl+C".
SEQ_TAGS = {
    "guiseq": ({"gui"}, " \u25b8 "), "keyseq": ({"key"}, "+"),
    "menuchoice": ({"guimenu", "guisubmenu", "guimenuitem", "guibutton"}, " \u25b8 "),
    "keycombo": ({"keycap", "keysym"}, "+"),
}
DIALECTS = {
    # format: (skip tags, block tags)
    "html": (SKIP_TAGS, BLOCK_TAGS),
    # (not the HTML skip list: DocBook's <option>, Mallard's <input> are text)
    "mallard": (MALLARD_SKIP_TAGS | {"script", "style"}, MALLARD_BLOCK_TAGS),
    "docbook": (DOCBOOK_SKIP_TAGS | {"script", "style"}, DOCBOOK_BLOCK_TAGS),
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
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp949")  # superset of EUC-KR (old Korean docs)
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace")


def detect_format(path):
    base = path[:-3] if path.endswith(".gz") else path
    low = base.lower()
    if low.endswith(HTML_SUFFIXES):
        return "html"
    if low.endswith(".page"):
        return "mallard"
    if low.endswith((".docbook", ".xml")):
        return "docbook"
    if low.endswith(".tex"):
        return "latex"
    if MAN_NAME_RE.search(low.replace(os.sep, "/")):
        return "man"
    return "text"


def norm_ws(s):
    return WS_RE.sub(" ", INVISIBLE_RE.sub("", s)).strip()


class HelpPageParser(HTMLParser):
    """Collects text blocks from one page, skipping boilerplate subtrees."""

    def __init__(self, main_id=None, dialect="html"):
        super().__init__(convert_charrefs=True)
        self.dialect = dialect
        self.skip_tags, self.block_tags = DIALECTS[dialect]
        self.main_id = main_id      # only collect inside element with this id
        self.stack = []             # [tag, skip, is_main, switch_kind]
        self.skip_depth = 0         # number of open skipping elements
        self.main_depth = 0         # number of open "main" elements
        self.link_depth = 0         # number of open <a href=...> elements
        self.blocks = []            # list of text blocks
        self.seqs = []              # open SEQ_TAGS: [tag, items seen]
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
        if tag in self.block_tags:
            self._flush()
        if tag in VOID_TAGS and self.dialect == "html":
            return
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        elem_id = a.get("id") or ""
        parent_switch = self.stack[-1][3] if self.stack else None

        skip = (
            tag in self.skip_tags
            or bool(classes & SKIP_CLASSES)
            or elem_id in SKIP_IDS
            or a.get("aria-hidden") == "true"
        )
        if "hidden" in a:
            if classes & OS_VARIANT_CLASSES:
                skip = True  # OS-specific duplicate of the default text
            elif parent_switch == "switchinline" and not elem_id.startswith("default"):
                skip = True  # inline alternatives: keep only the default one
        if (self.dialect == "mallard" and tag == "code"
                and not (self.stack and self.stack[-1][0] in MALLARD_INLINE_PARENTS)):
            skip = True  # a code block, not an inline literal
        is_main = self.main_id is not None and elem_id == self.main_id
        switch_kind = None
        if "switchinline" in classes:
            switch_kind = "switchinline"
        elif "switch" in classes:
            switch_kind = "switch"
        is_link = tag == "a" and "href" in a

        if self.dialect != "html":
            if tag in SEQ_TAGS:
                self.seqs.append([tag, 0])
            elif self.seqs and tag in SEQ_TAGS[self.seqs[-1][0]][0]:
                if self.seqs[-1][1] and self._collecting() and not skip:
                    sep = SEQ_TAGS[self.seqs[-1][0]][1]
                    if "".join(self.buf).rstrip().endswith((".", "\u2026", "?", "!")):
                        sep = sep.lstrip()  # "Open…▸ File": not a sentence end
                    self.buf.append(sep)
                self.seqs[-1][1] += 1

        self.stack.append((tag, skip, is_main, switch_kind, is_link))
        if skip:
            self.skip_depth += 1
        if is_main:
            self.main_depth += 1
        if is_link:
            self.link_depth += 1

    def handle_startendtag(self, tag, attrs):
        tag = tag.lower()
        if tag in self.block_tags:
            self._flush()

    def handle_endtag(self, tag):
        tag = tag.lower()
        if tag in self.block_tags:
            self._flush()
        if tag in VOID_TAGS and self.dialect == "html":
            return
        if self.seqs and self.seqs[-1][0] == tag:
            self.seqs.pop()
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


def extract_html_blocks(html):
    main_id = "DisplayArea" if re.search(r'id\s*=\s*["\']DisplayArea["\']', html) else None
    p = HelpPageParser(main_id=main_id)
    p.feed(html)
    p.close()
    return p.blocks


# --- XML (Mallard, DocBook) ---------------------------------------------------
DOCTYPE_RE = re.compile(r"<!DOCTYPE\b[^\[>]*(?:\[.*?\]\s*)?>", re.S)
ENTITY_DECL_RE = re.compile(
    r"<!ENTITY\s+([A-Za-z_][\w.-]*)\s+(?:\"([^\"]*)\"|'([^']*)')\s*>")
ENTITY_REF_RE = re.compile(r"&([A-Za-z_][\w.-]*);")
XML_ENTITIES = {"amp", "lt", "gt", "quot", "apos"}
WORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9+]*")


def resolve_xml_entities(xml):
    """Expand entities declared in the internal DTD subset; replace entities
    from external DTDs (e.g. KDE's &kde; &kwordquiz;) by the matching word of
    the document in its most capitalised form (KDE, KWordQuiz), else by the
    entity name; drop the DOCTYPE."""
    decls = {}
    m = DOCTYPE_RE.search(xml)
    if m:
        for d in ENTITY_DECL_RE.finditer(m.group(0)):
            decls.setdefault(d.group(1), d.group(2) if d.group(2) is not None else d.group(3))
        xml = xml[:m.start()] + xml[m.end():]
    words = {}
    for w in WORD_RE.findall(xml):
        k = w.lower()
        old = words.get(k)
        if old is None or sum(c.isupper() for c in w) > sum(c.isupper() for c in old):
            words[k] = w

    def sub(mo):
        name = mo.group(1)
        if name in XML_ENTITIES or name + ";" in HTML5_ENTITIES:
            return mo.group(0)
        if name in decls:
            return decls[name]
        return words.get(name.lower(), name)

    for _ in range(4):  # entity values may reference other entities
        new = ENTITY_REF_RE.sub(sub, xml)
        if new == xml:
            break
        xml = new
    return xml


def extract_xml_blocks(xml, dialect):
    p = HelpPageParser(dialect=dialect)
    p.feed(resolve_xml_entities(xml))
    p.close()
    return p.blocks


# --- man pages (roff) -----------------------------------------------------------
ROFF_NAMED = {
    "em": "\u2014", "en": "\u2013", "lq": "\u201c", "rq": "\u201d", "oq": "\u2018",
    "cq": "\u2019", "aq": "'", "dq": '"', "hy": "-", "mi": "-", "pl": "+",
    "ti": "~", "ha": "^", "rs": "\\", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122",
    "mu": "\u00d7", "<=": "\u2264", ">=": "\u2265", "->": "\u2192", "<-": "\u2190",
    "Fo": "\u00ab", "Fc": "\u00bb", "dg": "\u2020", "de": "\u00b0",
}
ROFF_ESCAPE_RE = re.compile(
    r"\\(?:"
    r"f(?:\[[^\]]*\]|\(..|.)"           # font change
    r"|s[+-]?(?:\d+|\[[^\]]*\]|\(..)"  # size change
    r"|[*](?:\[([^\]]*)\]|\((..)|(.))"   # string  -> group 1-3
    r"|\[([^\]]*)\]"                    # named char [xx] -> group 4
    r"|\((..)"                           # named char (xx  -> group 5
    r"|[kgnmwVYZ](?:\[[^\]]*\]|\(..|'[^']*'|.)"  # registers etc.
    r"|[hvlLoDbxNR]'[^']*'"               # motions/drawing
    r"|(.)"                               # anything else -> group 6
    r")")
ROFF_SIMPLE = {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ",
               "&": "", "|": "", "^": "", "c": "", "%": "", ":": "", "/": "",
               ",": "", ")": "", "'": "'", "`": "`", ".": ".", "t": " "}
ROFF_FONT_MACROS = {"B", "I", "SM", "SB"}
ROFF_ALT_MACROS = {"BR", "RB", "IR", "RI", "BI", "IB"}
ROFF_BREAK_MACROS = {"PP", "P", "LP", "IP", "TP", "TQ", "HP", "RS", "RE", "SH",
                     "SS", "sp", "br", "in", "ti", "bp", "ne", "Pp", "It",
                     "Bl", "El", "Sh", "Ss", "Bd", "Ed"}


def roff_unescape(s):
    def sub(m):
        if m.group(1) is not None or m.group(2) is not None or m.group(3) is not None:
            name = m.group(1) or m.group(2) or m.group(3)
            return ROFF_NAMED.get(name, "")
        if m.group(4) is not None or m.group(5) is not None:
            name = m.group(4) if m.group(4) is not None else m.group(5)
            if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
                return chr(int(name[1:], 16))
            return ROFF_NAMED.get(name, "")
        if m.group(6) is not None:
            return ROFF_SIMPLE.get(m.group(6), "")
        return ""
    return ROFF_ESCAPE_RE.sub(sub, s)


def roff_args(s):
    """Split macro arguments (double quotes group words)."""
    out = []
    for m in re.finditer(r'"((?:[^"]|"")*)"?|(\S+)', s):
        out.append(m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2))
    return out


# Sections that hold no running text (command synopsis, references, credits).
MAN_SKIP_SECTIONS = {
    "SYNOPSIS", "SEE ALSO", "AUTHOR", "AUTHORS", "COPYRIGHT", "개요", "요약",
    "사용법", "추가 참조", "참고", "참고 항목", "함께 보기", "관련 항목", "저자",
    "저작자", "만든이", "작성자", "저작권",
}


PO4A_IF_RE = re.compile(r"^[.']\s*if\s+!'po4a'hide'\s+(?=[.'])")


def extract_man_blocks(src):
    """Running text of a man page, one block per paragraph.  Headings (.SH,
    .TH), tags of tagged paragraphs (.TP: usually an option name), no-fill /
    example / table blocks, macro definitions and the sections listed in
    MAN_SKIP_SECTIONS are dropped."""
    blocks, buf = [], []
    skip_section = False

    def flush():
        if buf:
            text = norm_ws(roff_unescape(" ".join(buf)))
            if text and not skip_section:
                blocks.append(text)
            buf.clear()

    skip_until = None   # end macro of a skipped region
    tag_line = False    # next text line is a .TP tag
    for line in src.splitlines():
        # po4a-translated pages guard some requests with an always-true test
        line = PO4A_IF_RE.sub("", line)
        if skip_until:
            if re.match(r"^[.']\s*" + re.escape(skip_until) + r"\b", line):
                skip_until = None
            continue
        if line.startswith(('.\\"', "'\\\"", '\\"')) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            m = re.match(r"^[.']\s*(\S+)\s*(.*)$", line)
            if not m:
                continue
            mac, rest = m.group(1), m.group(2)
            if mac in ("nf", "EX"):
                flush()
                skip_until = "fi" if mac == "nf" else "EE"
            elif mac == "TS":
                flush()
                skip_until = "TE"
            elif mac in ("de", "de1", "am", "ig"):
                skip_until = "."
                if mac == "ig":
                    skip_until = rest.split()[0] if rest.split() else "."
            elif mac in ("TP", "TQ"):
                flush()
                tag_line = True
            elif mac == "SH":
                flush()
                heading = norm_ws(roff_unescape(" ".join(roff_args(rest))))
                skip_section = heading.upper() in MAN_SKIP_SECTIONS
            elif mac in ROFF_BREAK_MACROS:
                flush()
            elif mac in ROFF_FONT_MACROS:
                if tag_line:
                    tag_line = False
                    continue
                buf.append(" ".join(roff_args(rest)))
            elif mac in ROFF_ALT_MACROS:
                if tag_line:
                    tag_line = False
                    continue
                buf.append("".join(roff_args(rest)))
            # every other request/macro (.TH .if .ds .nr .ad .UR ...) is dropped
            continue
        if tag_line:
            tag_line = False
            continue
        if not line.strip():
            flush()
            continue
        buf.append(line)
    flush()
    return blocks


# --- plain text -------------------------------------------------------------------
RULE_LINE_RE = re.compile(r"^\s*([=~*#_-])\1{4,}\s*$")


def extract_text_blocks(text):
    """Paragraphs separated by blank lines or ruler lines (=====, ~~~~~)."""
    blocks, buf = [], []
    for line in text.splitlines() + [""]:
        if not line.strip() or RULE_LINE_RE.match(line):
            if buf:
                t = norm_ws(" ".join(buf))
                if t:
                    blocks.append(t)
                buf = []
            continue
        buf.append(line.strip())
    return blocks


# --- LaTeX -----------------------------------------------------------------------
# Environments whose content is not running text (code, math, tables, floats,
# examples showing LaTeX input, bibliographies).
TEX_SKIP_ENVS = {
    "verbatim", "verbatim*", "Verbatim", "BVerbatim", "lstlisting", "minted",
    "alltt", "code", "example", "examplek", "lscommand", "lined", "LTXexample",
    "codeexample", "sourcecode", "tcblisting", "table", "table*", "tabular",
    "tabular*", "tabularx", "tabu", "longtable", "tabbing", "equation",
    "equation*", "align", "align*", "alignat", "alignat*", "eqnarray",
    "eqnarray*", "IEEEeqnarray", "IEEEeqnarray*", "multline", "multline*",
    "gather", "gather*", "flalign", "flalign*", "math", "displaymath", "array",
    "picture", "tikzpicture", "pspicture", "figure", "figure*", "lsksymbols",
    "thebibliography", "filecontents", "filecontents*", "comment", "frame",
    "titlepage", "wrapfigure", "sidewaystable", "sidewaysfigure", "jury",
}
# Commands dropped together with their arguments.
TEX_DROP_CMDS = {
    "label", "ref", "pageref", "eqref", "autoref", "cref", "Cref", "cite",
    "citep", "citet", "nocite", "index", "glossary", "footnote",
    "footnotetext", "footnotemark", "marginpar", "caption", "input",
    "include", "includegraphics", "usepackage", "RequirePackage",
    "documentclass", "newcommand", "renewcommand", "providecommand",
    "newenvironment", "renewenvironment", "setlength", "addtolength",
    "setcounter", "addtocounter", "hspace", "vspace", "hyphenation",
    "pagestyle", "thispagestyle", "bibliographystyle", "bibliography",
    "title", "author", "date", "color", "pagecolor", "fontsize", "rule",
    "raisebox", "phantom", "hphantom", "vphantom", "linespread", "setmainfont",
    "setsansfont", "setmonofont", "setmainhangulfont", "setsanshangulfont",
    "setmonohangulfont", "sethangulfont", "newfontfamily", "includeonly",
    "DeclareOption", "ProcessOptions", "PassOptionsToPackage", "geometry",
    "hypersetup", "newcounter", "newlength", "settowidth", "mbox",
    "makebox", "framebox", "parbox", "tableofcontents", "maketitle",
}
TEX_SECTION_CMDS = {
    "part", "chapter", "section", "subsection", "subsubsection", "paragraph",
    "subparagraph", "frametitle", "addchap", "addsec",
}
TEX_WORDS = {
    "LaTeX": "LaTeX", "LaTeXe": "LaTeX2e", "TeX": "TeX", "XeTeX": "XeTeX",
    "XeLaTeX": "XeLaTeX", "LuaTeX": "LuaTeX", "LuaLaTeX": "LuaLaTeX",
    "pdfTeX": "pdfTeX", "pdfLaTeX": "pdfLaTeX", "BibTeX": "BibTeX",
    "AmS": "AMS", "AmSTeX": "AMS-TeX", "HLaTeX": "HLaTeX", "MF": "METAFONT",
    "MP": "METAPOST", "PSi": "PostScript", "EPSi": "Encapsulated PostScript",
    "ldots": "\u2026", "dots": "\u2026", "textbackslash": "\\", "bs": "\\",
    "slash": "/", "textasciitilde": "~", "textbar": "|", "textless": "<",
    "textgreater": ">", "S": "\u00a7", "P": "\u00b6", "copyright": "\u00a9",
    "ko": "ko.TeX", "today": "",
}
TEX_BREAK_CMDS = {
    "par", "item", "bigskip", "medskip", "smallskip", "newpage", "clearpage",
    "cleardoublepage", "noindent", "indent", "centering", "newline",
    "linebreak", "pagebreak", "vfill", "hfill", "appendix",
}
TEX_CMD_RE = re.compile(r"\\([A-Za-z@]+)\*?")


def _tex_group(s, i, open_ch="{", close_ch="}"):
    """s[i] == open_ch: return the index after the matching close_ch."""
    depth = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == open_ch:
            depth += 1
        elif c == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _tex_skip_args(s, i):
    """Skip optional [...] and mandatory {...} arguments after a command."""
    while True:
        j = i
        while j < len(s) and s[j] in " \t":
            j += 1
        if j < len(s) and s[j] in "[{":
            close = "]" if s[j] == "[" else "}"
            i = _tex_group(s, j, s[j], close)
        else:
            return i


def _tex_strip_envs(s):
    out, i = [], 0
    begin_re = re.compile(r"\\begin\s*\{([^}]*)\}")
    while True:
        m = begin_re.search(s, i)
        if not m:
            out.append(s[i:])
            break
        name = m.group(1).strip()
        if name not in TEX_SKIP_ENVS:
            out.append(s[i:m.end()])
            i = m.end()
            continue
        out.append(s[i:m.start()] + "\n\n")
        # find the matching \end{name}, allowing nesting of the same env
        depth, j = 1, m.end()
        pair = re.compile(r"\\(begin|end)\s*\{" + re.escape(name) + r"\}")
        while depth:
            e = pair.search(s, j)
            if not e:
                j = len(s)
                break
            depth += 1 if e.group(1) == "begin" else -1
            j = e.end()
        i = j
    return "".join(out)


def latex_to_text(src):
    """Flatten LaTeX source to plain text with blank lines between blocks."""
    verbs = []  # \verb|...| is literal text: hide it from all processing

    def hide(m):
        verbs.append(m.group(2))
        return "\ue000%d\ue001" % (len(verbs) - 1)
    src = re.sub(r"\\verb\*?([^A-Za-z\s])(.*?)\1", hide, src)
    src = re.sub(r"(?<!\\)%.*", "", src)                  # comments
    src = _tex_strip_envs(src)  # first: examples may contain \begin{document}
    m = re.search(r"\\begin\s*\{document\}(.*?)(?:\\end\s*\{document\}|$)", src, re.S)
    if m:
        src = m.group(1)
    src = re.sub(r"\\\[.*?\\\]|\$\$.*?\$\$", "\n\n", src, flags=re.S)   # display math
    src = re.sub(r"\\begin\s*\{[^}]*\}(\[[^\]]*\])?|\\end\s*\{[^}]*\}", "\n\n", src)
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if c == "\\":
            m = TEX_CMD_RE.match(src, i)
            if not m:                       # control symbol: \% \& \\ \, ...
                sym = src[i + 1:i + 2]
                if sym in "%&_#${}":
                    out.append(sym)
                elif sym in "'`\"^~=.":        # accents: \'e \"{o}
                    j = i + 2
                    if j < n and src[j] == "{":
                        k = _tex_group(src, j)
                        out.append(src[j + 1:k - 1])
                        i = k
                        continue
                elif sym == "\\":
                    out.append(" ")
                    i = _tex_skip_args(src, i + 2)  # \\[1ex]
                    continue
                elif sym in " ,;:!>" or sym == "\n":
                    out.append(" ")
                i += 2
                continue
            name, j = m.group(1), m.end()
            if name in TEX_DROP_CMDS:
                i = _tex_skip_args(src, j)
            elif name in TEX_SECTION_CMDS:
                out.append("\n\n")
                i = _tex_skip_args(src, j)
                out.append("\n\n")
            elif name in TEX_BREAK_CMDS:
                out.append("\n\n")
                i = j
                if name == "item" and j < n and src[j] == "[":
                    i = _tex_group(src, j, "[", "]")
            elif name == "href":               # \href{url}{text} -> text
                k = j
                while k < n and src[k] == " ":
                    k += 1
                if k < n and src[k] == "{":
                    k = _tex_group(src, k)
                i = k
            elif name in ("ci", "cmd"):        # lshort: \ci{foo} prints \foo
                out.append("\\")
                i = j
            elif name in TEX_WORDS:
                out.append(TEX_WORDS[name])
                i = j
                if j + 1 < n and src[j] == "{" and src[j + 1] == "}":
                    i = j + 2                  # \LaTeX{}
            else:                              # unknown: keep argument text
                i = j
                while i < n and src[i] == "[":  # drop optional args
                    i = _tex_group(src, i, "[", "]")
            continue
        if c == "$":                           # inline math: keep its text
            out.append(" ")
            i += 1
            continue
        if c in "{}":
            i += 1
            continue
        if c == "~":
            out.append(" ")
            i += 1
            continue
        out.append(c)
        i += 1
    text = "".join(out)
    text = (text.replace("``", "\u201c").replace("''", "\u201d")
            .replace("---", "\u2014").replace("--", "\u2013"))
    return re.sub("\ue000(\\d+)\ue001", lambda m: verbs[int(m.group(1))], text)


def extract_latex_blocks(src):
    return extract_text_blocks(latex_to_text(src))


def extract_blocks(text, fmt="html"):
    if fmt == "html":
        return extract_html_blocks(text)
    if fmt in ("mallard", "docbook"):
        return extract_xml_blocks(text, fmt)
    if fmt == "man":
        return extract_man_blocks(text)
    if fmt == "text":
        return extract_text_blocks(text)
    if fmt == "latex":
        return extract_latex_blocks(text)
    raise ValueError(f"unknown format {fmt!r}")


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


def list_inputs(paths, fmt="auto"):
    if fmt == "auto":
        suffixes = HTML_SUFFIXES + FORMAT_SUFFIXES["mallard"] + FORMAT_SUFFIXES["docbook"]
    else:
        suffixes = FORMAT_SUFFIXES.get(fmt, ())
    files = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p):
                dirs.sort()
                for n in names:
                    base = n[:-3] if n.endswith(".gz") else n
                    path = os.path.join(root, n)
                    if os.path.islink(path):
                        continue  # aliases (lzcat.1.gz -> xz.1.gz)
                    if base.lower().endswith(suffixes) or (
                            fmt in ("auto", "man") and detect_format(path) == "man"):
                        files.append(path)
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise SystemExit(f"html_to_corpus.py: error: no such file or directory: {p}")
    return sorted(set(files))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help="input files and/or directories")
    ap.add_argument("--format", choices=FORMATS, default="auto",
                    help="input format (default: auto, by file name)")
    ap.add_argument("--allow-empty", action="store_true",
                    help="write an empty output instead of failing when no "
                         "document survives filtering")
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
    files = list_inputs(paths, args.format)
    if not files:
        raise SystemExit("html_to_corpus.py: error: no input files found")

    # 1+2: extract and split.
    docs = []  # (path, [sentences], korean_ratio)
    for path in files:
        try:
            text = read_text(path)
        except OSError as e:
            raise SystemExit(f"html_to_corpus.py: error: cannot read {path}: {e}")
        fmt = args.format if args.format != "auto" else detect_format(path)
        sents = []
        for block in extract_blocks(text, fmt):
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
    if not out_docs and not args.allow_empty:
        raise SystemExit("html_to_corpus.py: error: no documents survived filtering")
    return 0


if __name__ == "__main__":
    sys.exit(main())
