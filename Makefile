# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch on local disk (find-links) is preferred when present, so that installing
# never pulls a multi-GB CUDA build here; elsewhere (--no-index fails fast) pip resolves torch normally.
TORCH_LOCAL ?= torch==2.13.0
# The declared floors: every dependency at the lowest version pyproject.toml allows
# (constraints/floors.txt), in a venv of its own, rebuilt from scratch when either file changes.
VENV_FLOORS ?= .venv-floors
PY_FLOORS := $(VENV_FLOORS)/bin/python
PACKAGES := sae_flux itda cae _sae_flux_requirements

.PHONY: demo test test-floors test-slow lint bench venv clean cae-findings

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	-$(PY) -m pip install -q --no-index --no-deps "$(TORCH_LOCAL)" 2>/dev/null
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

$(VENV_FLOORS)/.installed: pyproject.toml constraints/floors.txt
	rm -rf $(VENV_FLOORS)
	$(PYTHON) -m venv $(VENV_FLOORS)
	$(PY_FLOORS) -m pip install -q --upgrade pip
	-$(PY_FLOORS) -m pip install -q --no-index --no-deps "$(TORCH_LOCAL)" 2>/dev/null
	$(PY_FLOORS) -m pip install -q -e ".[dev]" -c constraints/floors.txt
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/sae-flux demo --out demo-out --overwrite

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(PACKAGES)
	$(PY) -m pytest -q
	$(PY) -m pytest -q --doctest-modules $(PACKAGES)

# The fast test suite on the declared floors (CI runs it after `make test`).
test-floors: $(VENV_FLOORS)/.installed
	$(PY_FLOORS) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(PACKAGES)

# The CAE paper's five findings on the LM organism (docs/cae-findings.md): about 15 minutes.
FINDINGS ?= findings-out
CAE_MULTIPLIERS ?= -0.5 -0.25 -0.1 0 0.1 0.25 0.5
cae-findings: $(VENV)/.installed
	$(PY) -m cae.organism.data $(FINDINGS)/data
	for b in kind power; do \
	  $(VENV)/bin/cae eval --model organism:tiny organism:small organism:medium \
	    --data $(FINDINGS)/data/$$b-ab.jsonl --corpus $(FINDINGS)/data/neutral.txt \
	    --other-data $(FINDINGS)/data/$$b-option.jsonl $(FINDINGS)/data/$$b-statement.jsonl \
	    --open $(FINDINGS)/data/$$b-open.txt --judge-fn cae.organism.corpus:judge_$$b \
	    --adversarial 32 --multipliers $(CAE_MULTIPLIERS) --read mean --normalize --positions all \
	    --draws 10 \
	    --seed 0 --out $(FINDINGS)/$$b || exit 1; \
	done

clean:
	rm -rf $(VENV) $(VENV_FLOORS) demo-out findings-out
