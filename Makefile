# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch on local disk (find-links) is preferred when present, so that installing
# never pulls a multi-GB CUDA build here; elsewhere (--no-index fails fast) pip resolves torch normally.
TORCH_LOCAL ?= torch==2.13.0

.PHONY: demo test test-slow lint bench venv clean cae-findings

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	-$(PY) -m pip install -q --no-index --no-deps "$(TORCH_LOCAL)" 2>/dev/null
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/sae-flux demo --out demo-out --overwrite

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy sae_flux itda cae
	$(PY) -m pytest -q
	$(PY) -m pytest -q --doctest-modules sae_flux itda cae

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy sae_flux itda cae

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
	rm -rf $(VENV) demo-out findings-out
