#!/usr/bin/env bash
# The README's starter-model numbers (`make starter-eval`): every figure comes from `omniphi eval`.
#   - shapes: the held-out test split of data/starter-shapes (written by `make starter`), asked by
#     text, by speech into the LLM (native) and by Whisper's transcript (transcribe), side by side;
#     the table also has the WER of Whisper's transcripts of the spoken questions (question_wer)
#   - forgetting: perplexity of docs/eval/general-text.txt, trained starter vs untrained starter-base,
#     and general questions (tests/fixtures/eval/qa)
# Results (JSON with every answer) go to runs/starter/eval/.
set -euo pipefail
cd "$(dirname "$0")/.."
OMNIPHI=.venv/bin/omniphi
DATA=data/starter-shapes
OUT=runs/starter/eval
if [ ! -f "$DATA/metadata.json" ]; then
  echo "no $DATA: run \`make starter\` first (it writes the data)" >&2
  exit 2
fi
mkdir -p "$OUT"
set -x
$OMNIPHI eval --model starter --task shapes --data "$DATA" --split test --ask-by text,native,transcribe \
  --batch-size 16 --no-progress --out "$OUT/shapes-test.json"
$OMNIPHI eval --model starter --task perplexity --data docs/eval/general-text.txt --no-progress --out "$OUT/ppl-starter.json"
$OMNIPHI eval --model starter-base --task perplexity --data docs/eval/general-text.txt --no-progress --out "$OUT/ppl-base.json"
$OMNIPHI eval --model starter --task qa --data tests/fixtures/eval/qa/questions.jsonl --no-progress --out "$OUT/qa.json"
