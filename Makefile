# labelwise: `make run` (install + main job on the embedded model), `make test`, `make bench`;
# `make review-env` adds Label Studio for `labelwise review` and its tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
LS_VENV ?= .venv-ls
REVIEW_STAMP := $(VENV)/.review-installed

.PHONY: install review-env run test bench clean

install: $(STAMP)

review-env: $(REVIEW_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# llama-cpp-python ships only its source on PyPI: the first install compiles it. LLAVA_BUILD=OFF skips the
	# multimodal (mtmd) library, which labelwise never loads and which was most of the compile time.
	CMAKE_ARGS="$${CMAKE_ARGS:-} -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 $(PIP) install -q -e '.[local,server,dev]'
	# A CJK font so plots show Chinese labels (Debian's WenQuanYi Micro Hei, 1.6 MB); plots fall back without it.
	@fc-list :lang=zh 2>/dev/null | grep -q . || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends fonts-wqy-microhei >/dev/null; } || \
		echo "note: no CJK font installed; plots will show boxes for Chinese labels"; }
	touch $(STAMP)

# The client (label-studio-sdk, the `review` extra) goes into $(VENV); it pins numpy<2.3 through opencv. The server
# (label-studio) pins Django and would downgrade openai, numpy and pyarrow, so it gets a venv of its own.
$(REVIEW_STAMP): $(STAMP)
	$(PIP) install -q -e '.[review]'
	test -x $(LS_VENV)/bin/python || python3 -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LS_VENV)/bin/python -m pip install -q 'label-studio>=1.23,<2'
	touch $(REVIEW_STAMP)

run: install
	$(VENV)/bin/labelwise relabel data/policy_labels.tsv --sample 20 --seed 0 --out runs/quickstart

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m benchmarks

clean:
	rm -rf runs .pytest_cache
