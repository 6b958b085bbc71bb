# LLM Portal. `make run` serves it, `make test` tests it; both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 4000
export PORT

.PHONY: run test install lint check bench bench-litellm clean

$(VENV)/.installed: pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; run with PYTHON=python3"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) manage.py prepare
	$(VENV)/bin/gunicorn portal.asgi:application -c deploy/gunicorn.conf.py

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .

check: install
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run

bench: install
	$(PY) bench/bench.py $(BENCH_ARGS)

# The same run plus LiteLLM Proxy on the same mocks, from its own venv (never a dependency of the portal).
LITELLM_VENV := .venv-litellm
bench-litellm: install
	test -x $(LITELLM_VENV)/bin/litellm || { $(PYTHON) -m venv $(LITELLM_VENV) && \
		$(LITELLM_VENV)/bin/pip install --quiet 'litellm[proxy]==1.108.*'; }
	$(PY) bench/bench.py --litellm --litellm-bin $(LITELLM_VENV)/bin/litellm $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data
