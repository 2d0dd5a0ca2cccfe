#!/usr/bin/env bash
# Demo TTS: Debian's asterisk prompts (real speech, one speaker, 8 kHz, ~20 min), S4 decoder vs Transformer decoder.
# Options go to the stage runner (python -m s4speech.recipe --task tts --help), e.g. --stage 6 --stop_stage 9.
set -euo pipefail
cd "$(dirname "$0")"
root=../../..
corpus=downloads; [ -d ../asr1/downloads/usr ] && corpus=../asr1/downloads  # the ASR demo's copy, if fetched
exec "${PYTHON:-$root/.venv/bin/python}" -m s4speech.recipe --task tts --corpus asterisk --corpus_dir $corpus \
  --tts_config $root/conf/demo/tts_ssm.yaml --tts_config $root/conf/demo/tts_transformer.yaml \
  --asr_model ../asr1/exp/asr_asr_ssm --n_long 6 --long_chars 300 --train_jobs 2 --num_workers 1 -- "$@"
