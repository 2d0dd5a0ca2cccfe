#!/usr/bin/env bash
# ESPnet-style local/data.sh: data preparation (stage 1) of a corpus, by s4speech.corpora. Same options as
# `python -m s4speech.recipe` (e.g. --corpus librispeech --corpus_dir downloads --train_set train_960
# --test_sets test_clean test_other); the corpus modules also run alone: python -m s4speech.corpora.<corpus> --help
set -euo pipefail
exec "${PYTHON:-python3}" -m s4speech.recipe --stage 1 --stop_stage 1 "$@"
