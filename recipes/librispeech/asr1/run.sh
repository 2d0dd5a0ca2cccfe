#!/usr/bin/env bash
# LibriSpeech 960 h: Conformer + S4 decoder vs Conformer + Transformer decoder (and an S4 encoder), long-form test_clean.
# Downloads into --corpus_dir when LibriSpeech/<part> is missing. Options: python -m s4speech.recipe --help
set -euo pipefail
cd "$(dirname "$0")"
conf=../../../conf/librispeech
exec "${PYTHON:-../../../.venv/bin/python}" -m s4speech.recipe --corpus librispeech --corpus_dir downloads \
  --train_set train_960 --valid_set dev --test_sets test_clean test_other \
  --long_sets test_clean_long_30s test_clean_long_60s test_clean_long_120s test_clean_long_300s \
  --token_type unigram --nbpe 5000 --speed_perturb_factors 0.9 1.0 1.1 --ngpu 1 --nj 8 \
  --asr_config $conf/asr_conformer_ssm.yaml --asr_config $conf/asr_conformer_transformer.yaml \
  --asr_config $conf/asr_ssm_ssm.yaml --inference_config $conf/decode.yaml -- "$@"
