#!/usr/bin/env bash
# CSJ (licensed: give its root with --corpus_dir): Conformer + S4 decoder vs + Transformer decoder, characters,
# CER, with and without an LM trained on the transcripts. Lectures are read in place through `segments`.
# Options after these replace them (see --help).
set -euo pipefail
cd "$(dirname "$0")"
conf=../../../conf/csj
exec "${PYTHON:-../../../.venv/bin/python}" -m s4speech.recipe --corpus csj \
  --train_set train --valid_set dev --test_sets eval1 eval2 eval3 \
  --long_sets eval1_long_30s eval1_long_60s eval1_long_120s eval1_long_300s \
  --token_type char --speed_perturb_factors 0.9 1.0 1.1 --ngpu 4 --nj 32 --inference_nj 8 \
  --asr_config $conf/asr_conformer_ssm.yaml --asr_config $conf/asr_conformer_transformer.yaml \
  --inference_config $conf/decode.yaml --use_lm true --lm_config $conf/lm_rnn.yaml -- "$@"
