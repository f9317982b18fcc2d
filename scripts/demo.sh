#!/usr/bin/env bash
# The main job on the built-in default, the whole pipeline on the CPU: build, Korean demo corpus,
# tokenizer, cleaned text and NSP shards, a small BERT pre-trained for 4-10 minutes on 2 cores
# (configs/demo_cpu.toml), its loss curve, then fill-mask, a [MASK] probe on in-domain sentences and the
# canary exposure of a number from the corpus.
# Outputs go to ${DEMO_DIR:-runs/demo}. DEMO_STEPS=N trains N optimizer steps instead of the config's
# 1,200, which teach the model the corpus's word frequencies, not yet its contexts (see configs/demo_cpu.toml;
# 9 min 38 s at 6.3k tokens/s on a 2-core 2 GHz EPYC on 2026-12-03); DEMO_STEPS=10000 (8x as long) gets the
# fill-mask to use them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n ${DEMO_STEPS:-} && ! $DEMO_STEPS =~ ^[1-9][0-9]{0,8}$ ]]; then
  echo "scripts/demo.sh: DEMO_STEPS=$DEMO_STEPS is not a positive step count" >&2
  exit 2
fi
scripts/setup.sh
scripts/build.sh
BIN="${BUILD_DIR:-build}"
DEMO_DIR="${DEMO_DIR:-runs/demo}"
mkdir -p "$DEMO_DIR"

echo "== 1. Korean demo corpus (Debian's Korean documentation, cached)"
CORPUS="${BERT_CACHE:-$HOME/.cache/bertforge}/demo/ko_corpus.txt"
scripts/build_demo_corpus.sh "$CORPUS"

echo "== 2. clean: PII scrubbed before anything learns from the text (the tokenizer's vocab.txt included)"
"$BIN/bert_prepare" clean --input "$CORPUS" --out "$DEMO_DIR/clean.txt" --dedupe

echo "== 3. WordPiece tokenizer (HF BertWordPieceTokenizer-compatible; the placeholders one token each)"
"$BIN/bert_tokenizer" train --input "$DEMO_DIR/clean.txt" --out "$DEMO_DIR/tokenizer" --vocab-size 16000 \
  --min-frequency 2 --special-tokens "[PAD]" "[UNK]" "[CLS]" "[SEP]" "[MASK]" "[RRN]" "[PHONE]" "[EMAIL]" "[CARD]" \
  "[ACCOUNT]" "[IP]"

echo "== 4. NSP shards"
"$BIN/bert_prepare" build --tokenizer "$DEMO_DIR/tokenizer" --input "$DEMO_DIR/clean.txt" --out "$DEMO_DIR/shards" \
  --max-seq-len 128 --valid-fraction 0.02 --seed 42
"$BIN/bert_prepare" inspect "$DEMO_DIR/shards" --decode 2

echo "== 5. encode a few sentences"
cat > "$DEMO_DIR/samples.txt" <<'TXT'
이순신은 [MASK] 중기의 무신이다.
셀을 선택한 다음 서식 메뉴에서 셀 서식을 선택합니다.
문서를 PDF로 내보내려면 파일 - 내보내기를 선택하십시오.
TXT
"$BIN/bert_tokenizer" encode --tokenizer "$DEMO_DIR/tokenizer" --input "$DEMO_DIR/samples.txt" --format tokens
"$BIN/bert_tokenizer" encode --tokenizer "$DEMO_DIR/tokenizer" --input "$DEMO_DIR/samples.txt" --add-special-tokens
echo "== 6. pre-train a small BERT on the CPU (configs/demo_cpu.toml; Ctrl-C saves, --resume continues)"
# The config names runs/demo; a different DEMO_DIR gets its own copy. Each demo run starts over.
CONFIG="$DEMO_DIR/demo_cpu.toml"
steps_edit=()
[[ -n ${DEMO_STEPS:-} ]] && steps_edit=(-e "s|^max_steps = .*|max_steps = $DEMO_STEPS  # DEMO_STEPS|")
sed -e "s|runs/demo|$DEMO_DIR|g" -e 's|^\[training\]$|[training]\noverwrite_output_dir = true|' "${steps_edit[@]}" \
  configs/demo_cpu.toml > "$CONFIG"
if [[ -n ${DEMO_STEPS:-} ]] && ! grep -q "^max_steps = $DEMO_STEPS\b" "$CONFIG"; then
  echo "scripts/demo.sh: DEMO_STEPS: configs/demo_cpu.toml has no 'max_steps = N' line to change" >&2
  exit 1
fi
"$BIN/bert_train" --config "$CONFIG"
"$BIN/bert_train" plot "$DEMO_DIR/model/metrics.jsonl" --out "$DEMO_DIR/model/loss.svg"

echo "== 7. fill-mask with the trained model (sentences in the style of the corpus's manuals)"
cat > "$DEMO_DIR/prompts.txt" <<'TXT'
Enter 키를 [MASK].
다음 [MASK] 클릭합니다.
Shift 키를 [MASK] 상태에서 클릭합니다.
이순신은 [MASK] 중기의 무신이다.
TXT
"$BIN/bert_infer" --model "$DEMO_DIR/model" --input "$DEMO_DIR/prompts.txt" --top-k 5

echo "== 8. [MASK] probe: P@1, P@10 and MRR of the words the corpus puts there"
printf '%s\t%s\n' \
  "Enter 키를 [MASK]." "누릅니다" \
  "다음 [MASK] 클릭합니다." "확인을" \
  "Shift 키를 [MASK] 상태에서 클릭합니다." "누른" \
  "파일 [MASK] 선택합니다." "형식을" \
  "Ctrl 키를 누른 [MASK] 클릭합니다." "상태에서" > "$DEMO_DIR/probe.tsv"
"$BIN/bert_infer" --model "$DEMO_DIR/model" --probe "$DEMO_DIR/probe.tsv"

echo "== 9. canary exposure: does the model prefer a number from its corpus to the 999 others of its shape?"
printf '%s\t%s\t%s\n' \
  "인치 당 1440개의 트윕 또는 센티미터 당 567개의 트윕이 존재합니다." "567" "in the corpus" \
  "인치 당 1440개의 트윕 또는 센티미터 당 813개의 트윕이 존재합니다." "813" "not in it" > "$DEMO_DIR/canaries.tsv"
"$BIN/bert_infer" --model "$DEMO_DIR/model" --exposure "$DEMO_DIR/canaries.tsv" --candidates 999
echo "demo outputs in $DEMO_DIR (loss curve: $DEMO_DIR/model/loss.svg, metrics: $DEMO_DIR/model/metrics.jsonl)"
