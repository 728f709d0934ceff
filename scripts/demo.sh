#!/usr/bin/env bash
# The main job on the embedded defaults, for a fleet of two on two bases: the sample Telegram
# export → dialogue records of two authors → a tiny T5 base and a tiny causal (Llama-style) base →
# one LoRA adapter per persona, each on its own base → both published into one model store → ONE
# `persona serve` (a fleet model per base, a front that routes each request to its persona's base)
# → a chat reply from each persona; and a tiny Whisper trained on espeak-ng speech of the same chat
# → asr.mar → one synthesised voice line transcribed.
# Everything lands in .persona/ (git-ignored); the server keeps running for `persona chat`.
set -euo pipefail
cd "$(dirname "$0")/.."

EXPORT=${EXPORT:-examples/sample-export/result.json}
MESSAGE=${MESSAGE:-привет! как лучше раскатить новую версию в кубер?}
VOICE_LINE=${VOICE_LINE:-база тормозит после миграции}   # a sentence init-asr trains on
WORK=.persona
STORE=$WORK/store
persona=.venv/bin/persona
# name | Telegram from_id | base | description (the prompt's first line)
PERSONAS=(
    "devops-dude|user5172839406|base|Я инженер DevOps, отвечаю коротко и по делу, иногда шучу."          # Борис Кубов, T5
    "on-call|user5901277364|base-causal|Я дежурный инженер, отвечаю быстро и про инциденты."             # Игорь | on-call, causal
)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "init-base: a tiny T5 built from the sample chat → $WORK/base"
if [ -f "$WORK/base/persona_base.json" ]; then
    echo "reusing $WORK/base (delete it to rebuild)"
else
    $persona init-base --out "$WORK/base" --corpus "$EXPORT"
fi

step "init-base --arch causal: a tiny Llama-style base from the same chat → $WORK/base-causal"
if [ -f "$WORK/base-causal/persona_base.json" ]; then
    echo "reusing $WORK/base-causal (delete it to rebuild)"
else
    $persona init-base --arch causal --out "$WORK/base-causal" --corpus "$EXPORT"
fi

step "init-asr: a tiny Whisper trained on espeak-ng speech of the sample chat → $WORK/asr"
if [ -f "$WORK/asr/report.json" ]; then
    echo "reusing $WORK/asr (delete it to rebuild)"
else
    $persona init-asr --out "$WORK/asr" --corpus "$EXPORT"
fi

$persona serve --stop >/dev/null 2>&1 || true
for entry in "${PERSONAS[@]}"; do
    IFS='|' read -r name author base description <<<"$entry"
    step "prepare + train: replies by $author on $WORK/$base → $WORK/runs/$name"
    $persona prepare "$EXPORT" --out "$WORK/data/$name" --persona-id "$author"
    printf 'persona:\n  name: %s\n  description: "%s"\n' "$name" "$description" >"$WORK/$name.yaml"
    $persona train --data "$WORK/data/$name" --base "$WORK/$base" --out "$WORK/runs/$name" --config "$WORK/$name.yaml"

    step "package: publish $WORK/runs/$name as $STORE/$name/v1"
    $persona package --run "$WORK/runs/$name" --name "$name" --version 1 --out "$STORE/$name/v1"
done

step "package-asr: $WORK/asr → $STORE/asr/asr.mar"
$persona package-asr --model "$WORK/asr" --out "$STORE/asr"

step "serve: a fleet per base the store's personas use, one endpoint for both (token auth on)"
$persona serve --model-store "$STORE"

for entry in "${PERSONAS[@]}"; do
    IFS='|' read -r name _ base _ <<<"$entry"
    step "chat with $name (on $WORK/$base) through /predictions/fleet"
    echo "you> $MESSAGE"
    printf '%s\n' "$MESSAGE" | $persona chat --persona "$name" | sed "s/^/$name> /"
done

step "listen: one synthesised voice line (espeak-ng → WAV) through the asr model"
espeak-ng -v ru -w "$WORK/voice.wav" "$VOICE_LINE"
echo "said>  $VOICE_LINE"
echo "heard> $($persona transcribe "$WORK/voice.wav")"

cat <<EOF

Done. Training reports: $WORK/runs/<persona>/report.json (loss curves, perplexity before -> after).
Keep talking:     .venv/bin/persona chat --persona devops-dude   (or on-call)
Roll a version:   .venv/bin/persona package ... --version 2 --out $STORE/devops-dude/v2
                  .venv/bin/persona switch --model-store $STORE --persona devops-dude --version 2
Stop serving:     .venv/bin/persona serve --stop
EOF
