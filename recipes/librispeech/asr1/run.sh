#!/usr/bin/env bash
# LibriSpeech 960 h: Conformer + S4 decoder vs Conformer + Transformer decoder (and an S4 encoder), with and
# without a Transformer LM, long-form test_clean. Downloads the corpus (and the LM text) into --corpus_dir when
# missing. Options after these replace them: ./run.sh --stage 7 --asr_config mine.yaml (see --help).
set -euo pipefail
cd "$(dirname "$0")"
conf=../../../conf/librispeech
exec "${PYTHON:-../../../.venv/bin/python}" -m s4speech.recipe --corpus librispeech --corpus_dir downloads \
  --train_set train_960 --valid_set dev --test_sets test_clean test_other \
  --long_sets test_clean_long_30s test_clean_long_60s test_clean_long_120s test_clean_long_300s \
  --token_type unigram --nbpe 5000 --speed_perturb_factors 0.9 1.0 1.1 --ngpu 4 --nj 32 --inference_nj 8 \
  --asr_config $conf/asr_conformer_ssm.yaml --asr_config $conf/asr_conformer_transformer.yaml \
  --asr_config $conf/asr_ssm_ssm.yaml --inference_config $conf/decode.yaml \
  --use_lm true --lm_config $conf/lm_transformer.yaml -- "$@"
