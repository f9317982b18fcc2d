#!/usr/bin/env bash
# Build a small real Korean text corpus for bertforge demos from Debian's
# libreoffice-help-ko package (LibreOffice help pages, Korean translation).
#
# Usage: scripts/build_demo_corpus.sh [OUT_FILE]
#   OUT_FILE defaults to ${BERT_CACHE:-$HOME/.cache/bertforge}/demo/ko_corpus.txt
#
# Output format (BERT NSP input): one sentence per line, a blank line between
# documents (one document = one help page).  The result is cached: if OUT_FILE
# already exists and is non-empty, nothing is rebuilt (delete it to rebuild).
# The corpus lives in the cache directory and is never committed to git.
#
# Environment:
#   BERT_CACHE    cache root (default $HOME/.cache/bertforge)
#   KO_HELP_DEB   use this already-downloaded .deb instead of apt-get download
#   TMPDIR        where the temporary work directory is created (default /tmp)
#
# Needs: bash, apt-get + dpkg (Debian/Ubuntu), python3 (stdlib only).
# If the apt package lists are missing, runs `apt-get update` once (as root).
set -euo pipefail

PROG=$(basename "$0")
PKG=libreoffice-help-ko
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONVERTER="$SCRIPT_DIR/html_to_corpus.py"

die() { echo "$PROG: error: $*" >&2; exit 1; }
info() { echo "$PROG: $*" >&2; }
trap 'echo "$PROG: error: command failed (exit $?, line $LINENO): $BASH_COMMAND" >&2' ERR

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
if [[ $# -gt 1 || ${1:-} == -* ]]; then
    echo "usage: $PROG [OUT_FILE]   (see --help)" >&2
    exit 2
fi

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
    if [[ -n $TMP_OUT ]]; then rm -f -- "$TMP_OUT"; fi
}
trap cleanup EXIT
# apt-get download writes into the current directory: work from the temp dir,
# so the script also works when started from a read-only directory.
cd "$WORK"

# ---- 1. fetch the .deb ---------------------------------------------------------
if [[ -n ${KO_HELP_DEB:-} ]]; then
    [[ -f $KO_HELP_DEB ]] || die "KO_HELP_DEB does not exist: $KO_HELP_DEB"
    cp -- "$KO_HELP_DEB" "$WORK/"
else
    apt_opts=(-q)
    # As root, apt drops privileges to _apt for downloads, which cannot write
    # to a private mktemp dir (harmless warning); download as root instead.
    if [[ $(id -u) -eq 0 ]]; then apt_opts+=(-o APT::Sandbox::User=root); fi
    info "downloading $PKG ..."
    if ! apt-get "${apt_opts[@]}" download "$PKG" >"$WORK/apt.log" 2>&1; then
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
        if ! apt-get "${apt_opts[@]}" download "$PKG" >"$WORK/apt.log" 2>&1; then
            sed 's/^/  /' "$WORK/apt.log" >&2
            die "apt-get download $PKG failed even after apt-get update"
        fi
    fi
fi
shopt -s nullglob
debs=("$WORK"/*.deb)
shopt -u nullglob
[[ ${#debs[@]} -eq 1 ]] || die "expected exactly one .deb in $WORK, found ${#debs[@]}"
DEB=${debs[0]}
info "got $(basename "$DEB") ($(human "$(stat -c %s "$DEB")"))"

# ---- 2. unpack -----------------------------------------------------------------
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

# ---- 3. convert and write atomically -------------------------------------------
TMP_OUT=$(mktemp "$OUT_DIR/.$(basename "$OUT").tmp.XXXXXX")
python3 "$CONVERTER" -o "$TMP_OUT" "$HELP_DIR" || die "html_to_corpus.py failed"
[[ -s $TMP_OUT ]] || die "conversion produced an empty corpus"
chmod 644 "$TMP_OUT"
mv -f -- "$TMP_OUT" "$OUT"
TMP_OUT=""

bytes=$(stat -c %s "$OUT")
lines=$(grep -c . "$OUT" || true)
docs=$(awk 'BEGIN { RS = "" } END { print NR }' "$OUT")
echo "$OUT: $docs documents, $lines lines, $bytes bytes ($(human "$bytes")) in $((SECONDS - START))s"
