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
PACKAGES := sae_flux itda cae _sae_flux_requirements _sae_flux_cliargs

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

# The CAE paper's five findings on the LM organism (docs/cae-findings.md): both behaviours side
# by side (one core each), three sizes, five seeds (splits and draws), every stage adding the
# vector at every position: 14.5 min measured on a shared 2-core machine. The tables:
# python benchmarks/cae_findings.py $(FINDINGS).
FINDINGS ?= findings-out
CAE_MULTIPLIERS ?= -0.5 -0.25 -0.1 0 0.1 0.25 0.5
CAE_SEEDS ?= 0 1 2 3 4
CAE_EVAL = OMP_NUM_THREADS=1 $(VENV)/bin/cae eval \
	--model organism:tiny organism:small organism:medium --read mean --normalize --positions all \
	--multipliers $(CAE_MULTIPLIERS) --seeds $(CAE_SEEDS) --draws 3 --max-windows 8 \
	--adversarial 8 --adversarial-top-k 16 --corpus $(FINDINGS)/data/neutral.txt \
	--prompt-examples 2 --prompt-separator " <sep> " --capability $(FINDINGS)/data/quiz.jsonl
cae-findings: $(VENV)/.installed
	$(PY) -m cae.organism.data $(FINDINGS)/data --n-ab 160 --n-other 40 --n-open 16 --n-neutral 600
	for b in kind power; do head -n 40 $(FINDINGS)/data/$$b-ab.jsonl > $(FINDINGS)/data/side-$$b.jsonl; done
	$(CAE_EVAL) --data $(FINDINGS)/data/kind-ab.jsonl --side-data $(FINDINGS)/data/side-power.jsonl \
	  --other-data $(FINDINGS)/data/kind-option.jsonl $(FINDINGS)/data/kind-statement.jsonl \
	  --open $(FINDINGS)/data/kind-open.txt --judge-fn cae.organism.corpus:judge_kind \
	  --prompt-instruction "persona : warmly" --prompt-instruction-not "persona : coldly" \
	  --out $(FINDINGS)/kind > $(FINDINGS)/kind.log 2>&1 & kind=$$!; \
	$(CAE_EVAL) --data $(FINDINGS)/data/power-ab.jsonl --side-data $(FINDINGS)/data/side-kind.jsonl \
	  --other-data $(FINDINGS)/data/power-option.jsonl $(FINDINGS)/data/power-statement.jsonl \
	  --open $(FINDINGS)/data/power-open.txt --judge-fn cae.organism.corpus:judge_power \
	  --prompt-instruction "persona : boldly" --prompt-instruction-not "persona : humbly" \
	  --out $(FINDINGS)/power > $(FINDINGS)/power.log 2>&1 & power=$$!; \
	wait $$kind && wait $$power

clean:
	rm -rf $(VENV) $(VENV_FLOORS) demo-out findings-out
