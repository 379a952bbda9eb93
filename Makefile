# Studio's two commands: `make run` and `make test`. Both run `make setup` first and are safe
# to rerun: each step below is skipped when its work is already done.
# `make test-fast` is the quick loop while working: the whole suite but the tests that start a
# live server, a worker or another process, a browser or the demo model (tests/conftest.py marks
# those `slow`), in about a minute on two cores. `make test` runs everything; CI runs it.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
export HF_HUB_OFFLINE ?= 1
# OpenMP threads that spin while they wait steal the other core on small CPU machines (a
# 2-thread torch step ran 3-5x slower beside another busy process); passive waits cost nothing.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup run test test-fast lint web worker scheduler

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch is pinned first so the project's torch range resolves to the CPU wheel on disk
# instead of a multi-GB CUDA build. The stamp is redone whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed
	$(PY) manage.py createdb
	$(PY) manage.py migrate --noinput

WEB = $(PY) -m uvicorn studio.asgi:application --host $(HOST) --port $(PORT) --ws websockets-sansio
# One worker process per GPU, each pinned to its GPU and named gpuN@host, one job at a time
# (prefetch 1, late acks): a diffusion job holds the whole GPU, and a prefetched message
# would wait behind it, unfair and unsafe. STUDIO_GPUS chooses the GPUs (all, cpu, or 0,1);
# with none, one worker cpu@host runs on the CPU (studio/run_workers.py). `make worker GPU=1`
# starts the one for GPU 1.
WORKER = $(PY) -m studio.run_workers
# Celery beat plus a small worker for upkeep (the reaper), apart from the GPU workers so it
# runs even while every one of them is busy with a long job.
SCHEDULER = $(PY) -m celery -A studio worker --beat --loglevel=INFO --pool=solo \
	--queues=maintenance,celery --hostname=scheduler@%h --schedule=.run/celerybeat-schedule

# Web server, the workers and the scheduler in the foreground; Ctrl-C stops them all, and so
# does any one of them exiting.
run: setup
	@echo ""
	@echo "  Studio is starting on http://$(HOST):$(PORT)/"
	@echo "  Create an admin in another terminal with: $(PY) manage.py createsuperuser"
	@echo "  Ctrl-C stops the web server, the workers and the scheduler."
	@echo ""
	@mkdir -p .run
	@trap 'kill $$(jobs -p) 2>/dev/null; wait' INT TERM EXIT; \
	$(WEB) & $(WORKER) & $(SCHEDULER) & \
	wait -n

web:
	$(WEB)

worker:
	$(WORKER) $(if $(GPU),--gpus=$(GPU))

scheduler:
	@mkdir -p .run
	$(SCHEDULER)

# Tests use their own Redis database, so they never touch a running Studio's queues.
test: export REDIS_URL ?= redis://127.0.0.1:6379/15
test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# The packages alone: tests make their own database, so the development one need not exist.
test-fast: export REDIS_URL ?= redis://127.0.0.1:6379/15
test-fast: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not slow" --numprocesses=auto --maxprocesses=4 --dist=loadscope $(PYTEST_ARGS)

lint:
	$(VENV)/bin/ruff check .
