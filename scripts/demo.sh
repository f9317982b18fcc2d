#!/usr/bin/env bash
# The main job on the built-in default: build, Korean demo corpus, tokenizer, cleaned text and
# NSP shards, then encode a few sentences. Outputs go to ${DEMO_DIR:-runs/demo}.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
BIN="${BUILD_DIR:-build}"
DEMO_DIR="${DEMO_DIR:-runs/demo}"
mkdir -p "$DEMO_DIR"

echo "== 1. Korean demo corpus (Debian's Korean documentation, cached)"
CORPUS="${BERT_CACHE:-$HOME/.cache/bertforge}/demo/ko_corpus.txt"
scripts/build_demo_corpus.sh "$CORPUS"

echo "== 2. WordPiece tokenizer (HF BertWordPieceTokenizer-compatible)"
"$BIN/bert_tokenizer" train --input "$CORPUS" --out "$DEMO_DIR/tokenizer" --vocab-size 16000 --min-frequency 2

echo "== 3. clean (PII scrub, dedupe) and build NSP shards"
"$BIN/bert_prepare" clean --input "$CORPUS" --out "$DEMO_DIR/clean.txt" --dedupe
"$BIN/bert_prepare" build --tokenizer "$DEMO_DIR/tokenizer" --input "$DEMO_DIR/clean.txt" --out "$DEMO_DIR/shards" \
  --max-seq-len 128 --valid-fraction 0.02 --seed 42
"$BIN/bert_prepare" inspect "$DEMO_DIR/shards" --decode 2

echo "== 4. encode a few sentences"
cat > "$DEMO_DIR/samples.txt" <<'TXT'
이순신은 [MASK] 중기의 무신이다.
셀을 선택한 다음 서식 메뉴에서 셀 서식을 선택합니다.
문서를 PDF로 내보내려면 파일 - 내보내기를 선택하십시오.
TXT
"$BIN/bert_tokenizer" encode --tokenizer "$DEMO_DIR/tokenizer" --input "$DEMO_DIR/samples.txt" --format tokens
"$BIN/bert_tokenizer" encode --tokenizer "$DEMO_DIR/tokenizer" --input "$DEMO_DIR/samples.txt" --add-special-tokens
echo "demo outputs in $DEMO_DIR"
