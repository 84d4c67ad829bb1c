#!/usr/bin/env bash
# The README's starter-model numbers (`make starter-eval`): every figure comes from `omniphi eval`.
#   - shapes: the held-out test split of data/starter-shapes (written by `make starter`), asked by
#     text, by speech into the LLM (native) and by Whisper's transcript (transcribe), side by side;
#     half the questions put the picture after the text (the "image_order" groups); the table also
#     has the WER of Whisper's transcripts of the spoken questions (question_wer). The model is served
#     pictures first (its media_placement), so both groups get one prompt and differ only in their
#     questions; shapes-test-picture-last.json asks every question with the picture after the text
#     (OpenAI's documented order), to compare on the same questions, and shapes-test-as-given.json
#     measures the model itself with the parts in the order sent (typed questions)
#   - espeak-ng voices: a fresh split (seed 7, never trained or tuned on) spoken by espeak-ng only,
#     the voices Whisper mishears most: the native path must hold up where the transcript does
#   - pictures outside the shapes world: held-out photos and drawings (outside_test.jsonl); the
#     accuracy is the share answered with the honest sentence
#   - forgetting: perplexity of docs/eval/general-text.txt, trained starter vs untrained starter-base,
#     general questions typed and spoken (docs/eval/general-qa.jsonl; general-qa-fresh.jsonl, 24
#     more written after the builds were tuned; tests/fixtures/eval/qa) and
#     follow-ups that need the previous turn (docs/eval/follow-ups.jsonl), both models, asked with no
#     system prompt (as the CLI and the API ask) and with the web page's (the *-page.json files)
# The model is the build `make starter` wrote (runs/starter/weights), or $STARTER_MODEL (e.g. `starter`, the
# committed weights). Results (JSON with every answer) go to runs/starter/eval/.
set -euo pipefail
cd "$(dirname "$0")/.."
OMNIPHI=.venv/bin/omniphi
DATA=data/starter-shapes
ESPEAK=data/starter-shapes-espeak
OUT=runs/starter/eval
MODEL=${STARTER_MODEL:-runs/starter/weights}
if [ ! -f "$DATA/metadata.json" ]; then
  echo "no $DATA: run \`make starter\` first (it writes the data)" >&2
  exit 2
fi
if [ "$MODEL" = runs/starter/weights ] && [ ! -d "$MODEL" ]; then
  echo "no $MODEL: run \`make starter\` first, or STARTER_MODEL=starter for the committed weights" >&2
  exit 2
fi
mkdir -p "$OUT"
set -x
$OMNIPHI eval --model "$MODEL" --task shapes --data "$DATA" --split test --ask-by text,native,transcribe \
  --batch-size 16 --no-progress --out "$OUT/shapes-test.json"
$OMNIPHI eval --model "$MODEL" --task shapes --data "$DATA" --split test --ask-by text,native,transcribe \
  --image-order last --batch-size 16 --no-progress --out "$OUT/shapes-test-picture-last.json"
$OMNIPHI eval --model "$MODEL" --task shapes --data "$DATA" --split test --ask-by text --media-placement as_given \
  --batch-size 16 --no-progress --out "$OUT/shapes-test-as-given.json"
[ -f "$ESPEAK/metadata.json" ] || $OMNIPHI data shapes --out "$ESPEAK" --n 200 --seed 7 --val-frac 0 --test-frac 0.75 --tts espeak-ng
$OMNIPHI eval --model "$MODEL" --task shapes --data "$ESPEAK" --split test --ask-by text,native,transcribe \
  --batch-size 16 --no-progress --out "$OUT/shapes-espeak.json"
$OMNIPHI eval --model "$MODEL" --task qa --data "$DATA/outside_test.jsonl" --batch-size 16 --max-new-tokens 32 \
  --no-progress --out "$OUT/outside.json"
$OMNIPHI eval --model "$MODEL" --task perplexity --data docs/eval/general-text.txt --no-progress --out "$OUT/ppl-model.json"
$OMNIPHI eval --model starter-base --task perplexity --data docs/eval/general-text.txt --no-progress --out "$OUT/ppl-base.json"
$OMNIPHI eval --model "$MODEL" --task qa --data tests/fixtures/eval/qa/questions.jsonl --no-progress --out "$OUT/qa.json"
PAGE_SYSTEM=$(.venv/bin/python -c "from omniphi.serve.state import ServeConfig; print(ServeConfig().system_prompt)")
for EVALUATED in "$MODEL" starter-base; do
  NAME=$([ "$EVALUATED" = starter-base ] && echo base || echo model)
  $OMNIPHI eval --model "$EVALUATED" --task qa --data docs/eval/general-qa.jsonl --ask-by text,native,transcribe \
    --no-progress --out "$OUT/general-$NAME.json"
  $OMNIPHI eval --model "$EVALUATED" --task qa --data docs/eval/general-qa-fresh.jsonl --ask-by text,native,transcribe \
    --no-progress --out "$OUT/general-fresh-$NAME.json"
  $OMNIPHI eval --model "$EVALUATED" --task qa --data docs/eval/follow-ups.jsonl --no-progress --out "$OUT/follow-ups-$NAME.json"
  $OMNIPHI eval --model "$EVALUATED" --task qa --data docs/eval/general-qa.jsonl --ask-by text,native,transcribe \
    --system "$PAGE_SYSTEM" --no-progress --out "$OUT/general-$NAME-page.json"
  $OMNIPHI eval --model "$EVALUATED" --task qa --data docs/eval/follow-ups.jsonl --system "$PAGE_SYSTEM" --no-progress \
    --out "$OUT/follow-ups-$NAME-page.json"
done
