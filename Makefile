# Set-up and everyday commands. `make run` and `make test` install what they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job: a referential game on digit images through a noisy 4-bit channel, cDNI, offline (a task
# where a fixed random code fails: docs/communication.md); prints where its TensorBoard run is.
run: install
	$(VENV)/bin/dni-agents train digits_referential

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# The full feed-forward table's CPU rows (~25 min on 2 cores; needs apt-get install dataset-fashion-mnist).
# The CNN rows want a GPU: dni-agents bench ff device=cuda --only cnn3 --out results/ff_full_cnn.json
bench: install
	$(VENV)/bin/dni-agents bench ff --only mlp3,mlp4,mlp5,mlp6 --out results/ff_full_mlp.json

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info runs results .pytest_cache
