# LLM Portal. `make run` serves it, `make test` tests it; both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test install lint check bench bench-litellm soak simulate-day clean

$(VENV)/.installed: pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; run with PYTHON=python3"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock ".[dev]"
	touch $@

install: $(VENV)/.installed

# `make run` reads .env (or PORTAL_ENV_FILE) like every entry point does (portal/envfile.py): the shell below
# evaluates it too, so the variables that steer it (PORTAL_DATA_DIR, MLFLOW_TRACKING_URI) may live there.
# It also starts the Celery worker with its beat (usage export to MLflow, daily counters, purge) and,
# when the full mlflow package is installed and MLFLOW_TRACKING_URI is not set, the MLflow UI on
# 127.0.0.1:$(MLFLOW_PORT) over the embedded store data/mlflow.db. All of them stop with gunicorn.
MLFLOW_PORT ?= 5001

run: install
	@trap 'kill $$(jobs -p) 2>/dev/null' EXIT; trap 'exit 143' INT TERM; \
	exports="$$($(PY) -m portal.envfile)" || exit 1; eval "$$exports"; \
	data="$${PORTAL_DATA_DIR:-$(CURDIR)/data}"; mlflow_ui=""; \
	if [ -z "$$MLFLOW_TRACKING_URI" ] && $(PY) -c "import flask, mlflow.server" 2>/dev/null; then \
		mlflow_ui="http://127.0.0.1:$(MLFLOW_PORT)"; \
	fi; \
	$(PY) manage.py prepare --mlflow-ui "$$mlflow_ui" || exit 1; \
	if [ -n "$$mlflow_ui" ]; then \
		MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) \
			--backend-store-uri "sqlite:///$$data/mlflow.db" --default-artifact-root "$$data/mlflow-artifacts" \
			--workers 1 >"$$data/mlflow-server.log" 2>&1 & \
	fi; \
	$(VENV)/bin/celery -A portal worker -B --concurrency 1 --loglevel WARNING \
		--schedule "$$data/celerybeat-schedule" & \
	$(VENV)/bin/gunicorn portal.asgi:application -c deploy/gunicorn.conf.py & wait $$!

# Your .env is for `make run`; the tests make their own.
test: install
	PORTAL_ENV_FILE=/dev/null $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports

check: install
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run

bench: install
	$(PY) bench/bench.py $(BENCH_ARGS)

# 50,000 mixed requests through gunicorn on PostgreSQL + Redis: memory, descriptors, connections, usage records.
soak: install
	$(PY) bench/soak.py $(SOAK_ARGS)

# A simulated day on the free tiers (24 h on a moved clock, a few minutes): mocks that enforce each model's real
# limits; the report and plot go to bench/results/simday-24h.*. PostgreSQL + Redis when DATABASE_URL and REDIS_URL
# are set (a scratch database: the run wipes it), else the embedded default.
simulate-day: install
	$(PY) bench/simday.py $(SIMDAY_ARGS)

# The same run plus LiteLLM Proxy on the same mocks, from its own venv (never a dependency of the portal).
LITELLM_VENV := .venv-litellm
bench-litellm: install
	test -x $(LITELLM_VENV)/bin/litellm || { $(PYTHON) -m venv $(LITELLM_VENV) && \
		$(LITELLM_VENV)/bin/pip install --quiet 'litellm[proxy]==1.108.*'; }
	$(PY) bench/bench.py --litellm --litellm-bin $(LITELLM_VENV)/bin/litellm $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data
