# make demo: set up .venv and evaluate the bundled checkpoint on small offline tasks (results/demo/).
# make test: set up .venv with the test tools and the HEAR tools, and .venv-heareval (hear-eval-kit's predictions
# code in its pinned environment, the reference of the HEAR protocol's tests), then run the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c requirements/constraints.txt
APT_PACKAGES := fluidsynth fluid-soundfont-gm espeak-ng flite festival festvox-kallpc16k hydrogen-drumkits sox libsndfile1 ffmpeg gcc

.PHONY: demo test system-deps

$(VENV)/.installed: setup.cfg requirements/constraints.txt requirements/hear-tools.txt requirements/hear-tools-deps.txt
	python3 -m venv $(VENV)
	$(PIP) -e '.[test]'
	$(PIP) --no-deps --ignore-requires-python -r requirements/hear-tools.txt
	$(PIP) -r requirements/hear-tools-deps.txt
	touch $@

# heareval 2021.1.3's predictions code needs pytorch-lightning 1.8.6 and numpy<2 (tests/heareval_env.py).
.venv-heareval/.installed: $(VENV)/.installed tests/heareval_env.py
	rm -f $@ && $(PY) tests/heareval_env.py .venv-heareval

# Offline sound sources for the synthetic tasks and the pre-training corpus, ffmpeg (the reference of the
# resampling tests: hear-preprocess made the HEAR tasks with it) and gcc (the C attention kernel, built at first
# use; tests/test_native.py) (Debian packages).
system-deps:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PACKAGES); }

demo: $(VENV)/.installed system-deps
	$(PY) -m eval.run --demo --out results/demo

test: $(VENV)/.installed .venv-heareval/.installed system-deps
	$(PY) -m pytest -q tests
