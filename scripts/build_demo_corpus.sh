#!/usr/bin/env bash
# Build a real Korean text corpus (~5 MB) for bertforge demos from the Korean
# documentation shipped in Debian packages: LibreOffice help (first and
# required), then GNOME/MATE/KDE help, the Debian installation guide, FAQ and
# history, the Apache manual, GIMP help, Korean man pages, the vim/emacs
# tutorials and the Korean LaTeX guides (see SOURCES below).
#
# Usage: scripts/build_demo_corpus.sh [OUT_FILE]
#   OUT_FILE defaults to ${BERT_CACHE:-$HOME/.cache/bertforge}/demo/ko_corpus.txt
#
# Output format (BERT NSP input): one sentence per line, a blank line between
# documents (one document = one help page / man page / chapter).  Documents
# come in SOURCES order, then path order; exact duplicate documents are
# dropped and the corpus is cut (at a document boundary) at KO_CORPUS_MAX_BYTES.
# The result is cached: if OUT_FILE already exists and is non-empty, nothing
# is rebuilt (delete it to rebuild).  It is never committed to git.
#
# Environment:
#   BERT_CACHE           cache root (default $HOME/.cache/bertforge)
#   KO_HELP_DEB          use this already-downloaded libreoffice-help-ko .deb
#   KO_CORPUS_EXTRA      0 = only libreoffice-help-ko (~1.5 MB; default 1)
#   KO_CORPUS_MAX_BYTES  size cap in bytes (default 5500000)
#   TMPDIR               where the temporary work directory is created (/tmp)
#
# Needs: bash, apt-get + dpkg (Debian 12 / Ubuntu), tar, python3 (stdlib).
# If the apt package lists are missing, runs `apt-get update` once (as root).
# Extra packages missing from the archive are skipped with a warning;
# libreoffice-help-ko itself is required.
set -euo pipefail

PROG=$(basename "$0")
PKG=libreoffice-help-ko
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONVERTER="$SCRIPT_DIR/html_to_corpus.py"
MAX_BYTES=${KO_CORPUS_MAX_BYTES:-5500000}
EXTRA=${KO_CORPUS_EXTRA:-1}

# Extra sources, in corpus order, after libreoffice-help-ko:
#   package|converter format|members to extract from the .deb (tar wildcards)
# Format "auto" picks mallard (.page) or docbook (.docbook/.xml) per file.
SOURCES=(
    "gnome-user-docs|mallard|./usr/share/help/ko/*.page"
    "gnome-devel-docs|mallard|./usr/share/help/ko/*.page"
    "installation-guide-amd64|html|./usr/share/doc/installation-guide-amd64/ko/*.html"
    "apache2-doc|html|./usr/share/doc/apache2-doc/manual/ko/*.html"
    "debian-faq-ko|html|./usr/share/doc/debian/FAQ/ko/*.html"
    "debian-history|html|./usr/share/doc/debian-history/docs/*.ko.html"
    "gimp-help-ko|html|./usr/share/gimp/2.0/help/ko/*.html"
    "mate-user-guide|docbook|./usr/share/help/ko/*.xml"
)
# GNOME applications with a (partly) Korean help, Mallard or DocBook.
for p in baobab bijiben brasero-common eog file-roller four-in-a-row \
         glade gnome-boxes gnome-calculator gnome-chess gnome-clocks \
         gnome-color-manager gnome-connections gnome-dictionary gnome-logs \
         gnome-mahjongg gnome-mines gnome-music gnome-nettool gnome-photos \
         gnome-sudoku gnome-system-monitor gnome-text-editor gucharmap hitori \
         lightsoff swell-foop tali; do
    SOURCES+=("$p|auto|./usr/share/help/ko/*.page ./usr/share/help/ko/*.docbook")
done
# KDE handbooks translated into Korean.
for p in kwordquiz kmag ksystemlog kcharselect; do
    SOURCES+=("$p|docbook|./usr/share/doc/HTML/ko/*.docbook")
done
# Korean man pages.
for p in man-db xz-utils passwd login; do
    SOURCES+=("$p|man|./usr/share/man/ko/*")
done
SOURCES+=(
    "vim-runtime|text|./usr/share/vim/vim*/tutor/tutor.ko.utf-8"
    "emacs-common|text|./usr/share/emacs/*/etc/tutorials/TUTORIAL.ko"
    # lshort-ko ("The Not So Short Introduction to LaTeX", as a source
    # tarball) and the ko.TeX / oblivoir / cjk-ko manuals
    "texlive-lang-korean|latex|./usr/share/doc/texlive-doc/latex/lshort-korean/*.tar.gz ./usr/share/doc/texlive-doc/latex/kotex-*/*.tex.gz ./usr/share/doc/texlive-doc/latex/cjk-ko/*.tex.gz ./usr/share/doc/texlive-doc/latex/pmhanguljamo/*.tex.gz"
)

die() { echo "$PROG: error: $*" >&2; exit 1; }
info() { echo "$PROG: $*" >&2; }
warn() { echo "$PROG: warning: $*" >&2; }
trap 'echo "$PROG: error: command failed (exit $?, line $LINENO): $BASH_COMMAND" >&2' ERR

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
if [[ $# -gt 1 || ${1:-} == -* ]]; then
    echo "usage: $PROG [OUT_FILE]   (see --help)" >&2
    exit 2
fi
[[ $MAX_BYTES =~ ^[0-9]+$ && $MAX_BYTES -gt 0 ]] || die "KO_CORPUS_MAX_BYTES must be a positive integer, got '$MAX_BYTES'"
[[ $EXTRA == 0 || $EXTRA == 1 ]] || die "KO_CORPUS_EXTRA must be 0 or 1, got '$EXTRA'"

OUT=${1:-${BERT_CACHE:-$HOME/.cache/bertforge}/demo/ko_corpus.txt}
case $OUT in /*) ;; *) OUT="$PWD/$OUT" ;; esac  # we cd to the temp dir later

human() { numfmt --to=iec-i --suffix=B "$1" 2>/dev/null || echo "$1 bytes"; }

# ---- cache hit ---------------------------------------------------------------
if [[ -s $OUT ]]; then
    size=$(stat -c %s "$OUT")
    echo "$OUT ($size bytes, $(human "$size")) [cached]"
    exit 0
fi

# ---- prerequisites -------------------------------------------------------------
command -v python3 >/dev/null || die "python3 not found"
[[ -f $CONVERTER ]] || die "converter not found: $CONVERTER"
command -v dpkg >/dev/null || die "dpkg not found (this script needs a Debian/Ubuntu system)"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"
command -v tar >/dev/null || die "tar not found"
if [[ -z ${KO_HELP_DEB:-} ]]; then
    command -v apt-get >/dev/null || die "apt-get not found (set KO_HELP_DEB=/path/to/$PKG.deb to skip the download)"
fi
OUT_DIR=$(dirname "$OUT")
mkdir -p "$OUT_DIR" || die "cannot create output directory $OUT_DIR"
[[ -w $OUT_DIR ]] || die "output directory is not writable: $OUT_DIR"

START=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bertforge-kocorpus.XXXXXX") || die "cannot create a temp dir"
TMP_OUT=""
cleanup() {
    rm -rf -- "$WORK"
    if [[ -n $TMP_OUT ]]; then rm -f -- "$TMP_OUT" "$TMP_OUT.npkg"; fi
}
trap cleanup EXIT
# apt-get download writes into the current directory: work from the temp dir,
# so the script also works when started from a read-only directory.
cd "$WORK"
mkdir -p "$WORK/lo" "$WORK/debs" "$WORK/parts"

apt_opts=(-q)
# As root, apt drops privileges to _apt for downloads, which cannot write
# to a private mktemp dir (harmless warning); download as root instead.
if [[ $(id -u) -eq 0 ]]; then apt_opts+=(-o APT::Sandbox::User=root); fi

# ---- 1. fetch libreoffice-help-ko (required) -----------------------------------
if [[ -n ${KO_HELP_DEB:-} ]]; then
    [[ -f $KO_HELP_DEB ]] || die "KO_HELP_DEB does not exist: $KO_HELP_DEB"
    cp -- "$KO_HELP_DEB" "$WORK/lo/"
else
    info "downloading $PKG ..."
    if ! (cd "$WORK/lo" && apt-get "${apt_opts[@]}" download "$PKG") >"$WORK/apt.log" 2>&1; then
        # Typical cause: no/stale package lists (fresh container).  Refresh once.
        if [[ $(id -u) -ne 0 ]]; then
            sed 's/^/  /' "$WORK/apt.log" >&2
            die "apt-get download $PKG failed; package lists may be missing: run 'apt-get update' as root (or set KO_HELP_DEB)"
        fi
        info "apt-get download failed ($(grep -m1 -E '^(E|W):' "$WORK/apt.log" || echo 'unknown error')); running apt-get update once and retrying"
        apt-get -q update >"$WORK/apt-update.log" 2>&1 || {
            tail -n 5 "$WORK/apt-update.log" | sed 's/^/  /' >&2
            die "apt-get update failed (no network or broken sources?)"
        }
        if ! (cd "$WORK/lo" && apt-get "${apt_opts[@]}" download "$PKG") >"$WORK/apt.log" 2>&1; then
            sed 's/^/  /' "$WORK/apt.log" >&2
            die "apt-get download $PKG failed even after apt-get update"
        fi
    fi
fi
shopt -s nullglob
debs=("$WORK"/lo/*.deb)
shopt -u nullglob
[[ ${#debs[@]} -eq 1 ]] || die "expected exactly one .deb in $WORK/lo, found ${#debs[@]}"
DEB=${debs[0]}
info "got $(basename "$DEB") ($(human "$(stat -c %s "$DEB")"))"

# ---- 2. unpack and convert libreoffice-help-ko ---------------------------------
dpkg -x "$DEB" "$WORK/root" || die "dpkg -x failed on $DEB"

# Debian 12 (LibreOffice 7.x) layout: usr/share/libreoffice/help/ko/text/**.html
# (~2560 pre-rendered HTML pages, plus media/js).  Older releases shipped the
# help as zip archives (*.zip / *.jar); unpack those if that is what we got.
HELP_DIR=$(find "$WORK/root" -type d -path '*/help/ko' | sort | head -n 1)
if [[ -z $HELP_DIR ]]; then
    HELP_DIR=$(find "$WORK/root" -type d -name ko | sort | head -n 1)
fi
[[ -n $HELP_DIR ]] || die "no Korean help directory (*/help/ko) found in $(basename "$DEB")"

count_pages() {
    find "$1" -type f \( -name '*.html' -o -name '*.htm' -o -name '*.xhp' \
        -o -name '*.html.gz' -o -name '*.htm.gz' -o -name '*.xhp.gz' \) | wc -l
}
n_pages=$(count_pages "$HELP_DIR")
if [[ $n_pages -eq 0 ]]; then
    mapfile -t archives < <(find "$HELP_DIR" -type f \( -name '*.zip' -o -name '*.jar' \) | sort)
    for a in "${archives[@]}"; do
        d="$WORK/unzipped/$(basename "$a")"
        mkdir -p "$d"
        python3 -m zipfile -e "$a" "$d" || die "cannot unpack help archive $a"
    done
    if [[ ${#archives[@]} -gt 0 ]]; then
        HELP_DIR="$WORK/unzipped"
        n_pages=$(count_pages "$HELP_DIR")
    fi
fi
[[ $n_pages -gt 0 ]] || die "no HTML/XHP help pages found under ${HELP_DIR#"$WORK/root"}"
info "found $n_pages help pages under ${HELP_DIR#"$WORK/root"}"

PARTS=()   # "package|part file", in corpus order
part="$WORK/parts/000-$PKG.txt"
python3 "$CONVERTER" --max-bytes 0 -o "$part" "$HELP_DIR" 2>"$WORK/conv.log" || {
    sed 's/^/  /' "$WORK/conv.log" >&2
    die "html_to_corpus.py failed on $PKG"
}
[[ -s $part ]] || die "conversion of $PKG produced an empty corpus"
PARTS+=("$PKG|$part")
rm -rf -- "$WORK/root" "$WORK/unzipped"

# ---- 3. extra sources ------------------------------------------------------------
# Download all extra packages in one apt-get call; if that fails (a package
# missing from the archive makes apt-get refuse the whole list), fetch them
# one by one and skip the missing ones.
fetch_extras() {
    local -a pkgs=("$@") missing=()
    if ! command -v apt-get >/dev/null; then
        warn "apt-get not found: extra sources skipped (only $PKG is used)"
        return 0
    fi
    info "downloading ${#pkgs[@]} extra packages ..."
    if (cd "$WORK/debs" && apt-get "${apt_opts[@]}" download "${pkgs[@]}") >"$WORK/apt-extra.log" 2>&1; then
        return 0
    fi
    for p in "${pkgs[@]}"; do
        if compgen -G "$WORK/debs/${p}_*.deb" >/dev/null; then continue; fi
        if ! (cd "$WORK/debs" && apt-get "${apt_opts[@]}" download "$p") >"$WORK/apt-one.log" 2>&1; then
            missing+=("$p")
            warn "$p: $(grep -m1 -E '^E:' "$WORK/apt-one.log" || echo 'apt-get download failed'); skipped"
        fi
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        warn "${#missing[@]} extra package(s) not available, skipped: ${missing[*]}"
    fi
}

if [[ $EXTRA == 1 ]]; then
    extra_pkgs=()
    for s in "${SOURCES[@]}"; do extra_pkgs+=("${s%%|*}"); done
    fetch_extras "${extra_pkgs[@]}"

    i=0
    for s in "${SOURCES[@]}"; do
        i=$((i + 1))
        IFS='|' read -r pkg fmt members <<<"$s"
        shopt -s nullglob
        pdebs=("$WORK/debs/${pkg}"_*.deb)
        shopt -u nullglob
        if [[ ${#pdebs[@]} -eq 0 ]]; then
            continue  # already warned about in fetch_extras
        fi
        dest="$WORK/x/$pkg"
        mkdir -p "$dest"
        read -r -a pats <<<"$members"
        # tar exits non-zero when a pattern matches nothing: not an error here
        # (whether anything was extracted is checked below).
        dpkg-deb --fsys-tarfile "${pdebs[0]}" 2>"$WORK/deb.log" |
            tar -x -C "$dest" --wildcards --no-same-owner "${pats[@]}" 2>/dev/null || true
        if [[ $pkg == texlive-lang-korean ]]; then
            # lshort-ko ships as a source tarball (with macOS ._* junk files)
            while IFS= read -r -d '' tgz; do
                tar -xzf "$tgz" -C "$(dirname "$tgz")" --no-same-owner --exclude='._*' 2>/dev/null ||
                    warn "cannot unpack $(basename "$tgz"); skipped"
            done < <(find "$dest" -type f -name '*.tar.gz' -print0)
        fi
        list="$WORK/parts/$pkg.list"
        find "$dest" -type f ! -name '._*' ! -name 'legal.xml' ! -name '*.tar.gz' \
            ! -name '*.sty' ! -name '*.cls' ! -name 'Makefile' -print | LC_ALL=C sort >"$list"
        if [[ ! -s $list ]]; then
            warn "$pkg: no Korean files found (${members}); skipped"
            continue
        fi
        part=$(printf '%s/parts/%03d-%s.txt' "$WORK" "$i" "$pkg")
        if ! python3 "$CONVERTER" --format "$fmt" --allow-empty --max-bytes 0 \
                --files-from "$list" -o "$part" 2>"$WORK/conv.log"; then
            sed 's/^/  /' "$WORK/conv.log" >&2
            warn "html_to_corpus.py failed on $pkg; skipped"
            continue
        fi
        PARTS+=("$pkg|$part")
        rm -rf -- "$dest" "${pdebs[@]}"
    done
fi

# ---- 4. merge (dedupe, cap) and write atomically ---------------------------------
TMP_OUT=$(mktemp "$OUT_DIR/.$(basename "$OUT").tmp.XXXXXX")
python3 - "$TMP_OUT" "$MAX_BYTES" "${PARTS[@]}" <<'PY' || die "merging the converted sources failed"
import re, sys
out, cap, parts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
seen, docs, total, full = set(), [], 0, False
rows = []
for spec in parts:
    pkg, path = spec.split("|", 1)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    n = b = dup = 0
    for doc in (d.strip("\n") for d in text.split("\n\n")):
        if not doc:
            continue
        if doc in seen:
            dup += 1
            continue
        size = len(doc.encode("utf-8")) + (2 if docs else 1)  # "\n\n" separator / final "\n"
        if full or total + size > cap:
            full = True
            continue
        seen.add(doc)
        docs.append(doc)
        total += size
        n += 1
        b += size
    rows.append((pkg, n, b, dup))
with open(out, "w", encoding="utf-8", newline="\n") as f:
    f.write("\n\n".join(docs) + "\n")
for pkg, n, b, dup in rows:
    extra = f", {dup} duplicate docs dropped" if dup else ""
    print(f"  {pkg:<26} {n:5d} docs {b:9d} bytes{extra}", file=sys.stderr)
if full:
    print(f"  (capped at {cap} bytes: later documents dropped)", file=sys.stderr)
with open(out + ".npkg", "w") as f:
    f.write(str(sum(1 for r in rows if r[1])))
PY
[[ -s $TMP_OUT ]] || die "conversion produced an empty corpus"
npkg=$(cat "$TMP_OUT.npkg")
rm -f -- "$TMP_OUT.npkg"
chmod 644 "$TMP_OUT"
mv -f -- "$TMP_OUT" "$OUT"
TMP_OUT=""

bytes=$(stat -c %s "$OUT")
lines=$(grep -c . "$OUT" || true)
docs=$(awk 'BEGIN { RS = "" } END { print NR }' "$OUT")
echo "$OUT: $docs documents, $lines lines, $bytes bytes ($(human "$bytes")) from $npkg packages in $((SECONDS - START))s"
