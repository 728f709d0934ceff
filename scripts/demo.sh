#!/usr/bin/env bash
# The main job on the embedded defaults: the sample Telegram export → dialogue records → a tiny
# T5 base → a LoRA adapter → a versioned .mar → TorchServe → one chat reply; and a tiny Whisper
# trained on espeak-ng speech of the same chat → asr.mar → one synthesised voice line transcribed.
# Everything lands in .persona/ (git-ignored); the server keeps running for `persona chat`.
set -euo pipefail
cd "$(dirname "$0")/.."

PERSONA=${PERSONA:-devops-dude}
PERSONA_ID=${PERSONA_ID:-user5172839406}   # Борис Кубов, the sample chat's DevOps regular
EXPORT=${EXPORT:-examples/sample-export/result.json}
MESSAGE=${MESSAGE:-привет! как лучше раскатить новую версию в кубер?}
VOICE_LINE=${VOICE_LINE:-база тормозит после миграции}   # a sentence init-asr trains on
WORK=.persona
persona=.venv/bin/persona

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "prepare: $EXPORT → $WORK/data (replies by $PERSONA_ID)"
$persona prepare "$EXPORT" --out "$WORK/data" --persona-id "$PERSONA_ID"

step "init-base: a tiny T5 built from the sample chat → $WORK/base"
if [ -f "$WORK/base/persona_base.json" ]; then
    echo "reusing $WORK/base (delete it to rebuild)"
else
    $persona init-base --out "$WORK/base" --corpus "$EXPORT"
fi

step "init-asr: a tiny Whisper trained on espeak-ng speech of the sample chat → $WORK/asr"
if [ -f "$WORK/asr/report.json" ]; then
    echo "reusing $WORK/asr (delete it to rebuild)"
else
    $persona init-asr --out "$WORK/asr" --corpus "$EXPORT"
fi

step "train: LoRA on $WORK/data → $WORK/runs/$PERSONA"
$persona train --data "$WORK/data" --base "$WORK/base" --out "$WORK/runs/$PERSONA"

step "package: $WORK/runs/$PERSONA → $WORK/store/$PERSONA/v1/$PERSONA.mar"
$persona serve --stop >/dev/null 2>&1 || true
rm -rf "${WORK:?}/store/$PERSONA"
$persona package --run "$WORK/runs/$PERSONA" --name "$PERSONA" --version 1 --out "$WORK/store/$PERSONA/v1"

$persona package-asr --model "$WORK/asr" --out "$WORK/store/asr"

step "serve: TorchServe on 127.0.0.1 (token auth on)"
$persona serve --model-store "$WORK/store"

step "chat: one message through the inference API"
echo "you> $MESSAGE"
printf '%s\n' "$MESSAGE" | $persona chat --persona "$PERSONA" | sed "s/^/$PERSONA> /"

step "listen: one synthesised voice line (espeak-ng → WAV) through the asr model"
espeak-ng -v ru -w "$WORK/voice.wav" "$VOICE_LINE"
echo "said>  $VOICE_LINE"
echo "heard> $($persona transcribe "$WORK/voice.wav")"

cat <<EOF

Done. The training report is $WORK/runs/$PERSONA/report.json (loss curve beside it).
Keep talking:   .venv/bin/persona chat --persona $PERSONA
Stop serving:   .venv/bin/persona serve --stop
EOF
