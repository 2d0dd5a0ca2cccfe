#!/usr/bin/env bash
# Demo ASR: Debian's asterisk prompts (real speech, one speaker, 8 kHz, ~24 min), S4 decoder vs ESPnet's S4 decoder vs Transformer decoder.
# Options go to the stage runner (python -m s4speech.recipe --help), e.g. --stage 7 --stop_stage 9.
set -euo pipefail
cd "$(dirname "$0")"
root=../../..
exec "${PYTHON:-$root/.venv/bin/python}" -m s4speech.recipe --corpus asterisk --corpus_dir downloads \
  --asr_config $root/conf/demo/asr_ssm.yaml --asr_config $root/conf/demo/asr_espnet_s4.yaml \
  --asr_config $root/conf/demo/asr_transformer.yaml \
  --inference_config $root/conf/demo/decode.yaml --test_sets test --long_sets test_long_30s test_long_60s test_long_120s \
  --train_jobs 3 --num_workers 1 -- "$@"
