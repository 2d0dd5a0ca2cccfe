#!/usr/bin/env bash
# LibriSpeech 100 h (smaller budget): Conformer + S4 decoder vs + Transformer decoder, no LM (as ESPnet's
# librispeech_100 recipe). Options after these replace them (see --help).
set -euo pipefail
cd "$(dirname "$0")"
conf=../../../conf/librispeech_100
exec "${PYTHON:-../../../.venv/bin/python}" -m s4speech.recipe --corpus librispeech --corpus_dir downloads \
  --train_set train_100 --valid_set dev --test_sets test_clean test_other \
  --long_sets test_clean_long_30s test_clean_long_60s test_clean_long_120s test_clean_long_300s \
  --token_type unigram --nbpe 5000 --speed_perturb_factors 0.9 1.0 1.1 --ngpu 1 --nj 16 --inference_nj 8 \
  --asr_config $conf/asr_conformer_ssm.yaml --asr_config $conf/asr_conformer_transformer.yaml \
  --inference_config $conf/decode.yaml -- "$@"
