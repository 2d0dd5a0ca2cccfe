#!/usr/bin/env bash
# LJSpeech 1.1 (24 h, one speaker, 22.05 kHz): Transformer-TTS with an S4 decoder vs ESPnet's Transformer-TTS.
# Downloads LJSpeech-1.1 into --corpus_dir when missing. Options: python -m s4speech.recipe --task tts --help
set -euo pipefail
cd "$(dirname "$0")"
conf=../../../conf/ljspeech
exec "${PYTHON:-../../../.venv/bin/python}" -m s4speech.recipe --task tts --corpus ljspeech --corpus_dir downloads \
  --train_set train --valid_set dev --test_sets test --ngpu 1 --max_sec 15 --n_long 50 --long_chars 800 \
  --tts_config $conf/tts_ssm.yaml --tts_config $conf/tts_transformer.yaml -- "$@"
