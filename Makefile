# elastic_airflow.cluster — developer entry points. `make help` lists them.
SHELL := /bin/bash
CACHE ?= $(or $(ELASTIC_AIRFLOW_CACHE),$(HOME)/.cache/elastic-airflow)
# The venv is keyed by the requirements so a change rebuilds it and a re-run reuses it.
VENV_KEY := $(shell cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-12)
VENV ?= $(CACHE)/venv-$(VENV_KEY)
PY := $(VENV)/bin/python
export PATH := $(VENV)/bin:$(PATH)
export ELASTIC_AIRFLOW_CACHE := $(CACHE)
CLUSTER := tests/cluster/cluster.sh

.PHONY: help venv cluster-up cluster-down cluster-status

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(VENV)/.done: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.done ## create the Python venv (cached outside the repo)

cluster-up: ## start the local Kubernetes control plane (etcd, apiserver, controllers, KWOK)
	$(CLUSTER) up

cluster-down: ## stop the local control plane and remove its state
	$(CLUSTER) down

cluster-status: ## which control plane components are running
	$(CLUSTER) status
