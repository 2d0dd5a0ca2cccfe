# `make setup` builds .venv/ with s4speech and its pinned dependencies;
# `make test` runs the test suite (setting up first when needed);
# `make demo` runs the demo ASR and TTS recipes end to end on the embedded default corpus.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.s4speech-installed

.PHONY: setup test demo clean gpu-check

setup: $(STAMP)

$(STAMP): setup.py
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q -e '.[dev]' > $(VENV)/pip.log 2>&1 || (grep -v "is ignored" $(VENV)/pip.log; exit 1)
	$(VPY) -c "import s4speech, espnet2, torch; print('s4speech ready, torch', torch.__version__)"
	touch $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -q tests

demo: $(STAMP)
	bash recipes/demo/asr1/run.sh
	bash recipes/demo/tts1/run.sh

gpu-check: $(STAMP)
	@$(VPY) -m s4speech.bench.gpu --out gpu-check.md --json gpu-check.json

clean:
	rm -rf $(VENV) exp dump data
