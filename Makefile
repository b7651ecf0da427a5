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
# kubectl of the cluster's own build, with its admin kubeconfig.
CLUSTER_KUBECTL = $$(cat $(CACHE)/run/cluster/bin)/kubectl --kubeconfig $(CACHE)/run/cluster/kubeconfig
# The collection is imported as elastic_airflow.cluster through a link to this
# checkout (one link per checkout path, so clones do not fight over it).
CHECKOUT_KEY := $(shell printf %s "$(CURDIR)" | sha256sum | cut -c1-8)
COLLECTIONS := $(CACHE)/collections-$(CHECKOUT_KEY)
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
INVENTORY ?= inventories/local
# What `make test` (and so CI) runs, in this order: cheap and static first,
# then the control plane, the playbooks on it, and the real-server suites.
TESTS := test-static test-unit test-cluster test-cluster-lifecycle test-playbooks molecule-local \
         test-drain test-drain-playbook test-monitoring test-elastic test-e2e

.PHONY: help deps venv cluster-up cluster-down cluster-status

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(VENV)/.done: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.done ## create the Python venv (cached outside the repo)

deps: ## install the Debian packages a fresh machine lacks (containerd, runc, CNI plugins, real servers, ...)
	@scripts/install-deps.sh

cluster-up: deps ## start the local cluster (control plane, the real node with CoreDNS, KWOK nodes)
	$(CLUSTER) up

cluster-down: ## stop the local cluster and remove its state (and whatever the node changed on this machine)
	$(CLUSTER) down

cluster-status: ## which control plane components are running
	$(CLUSTER) status

collection-link:
	@mkdir -p $(COLLECTIONS)/ansible_collections/elastic_airflow
	@ln -sfn $(CURDIR) $(COLLECTIONS)/ansible_collections/elastic_airflow/cluster

.PHONY: demo demo-down demo-password test test-static test-unit collection-link

# Each step says how long it took; a re-run changes nothing and is quick.
demo: deps venv collection-link ## the local cluster, its images, site.yml, then an Airflow to log in to (URLs and login at the end)
	@s=$$(date +%s); $(MAKE) --no-print-directory cluster-up && echo "[demo] cluster up: $$(( $$(date +%s) - s )) s"
	@s=$$(date +%s); $(MAKE) --no-print-directory images && echo "[demo] images: $$(( $$(date +%s) - s )) s"
	@s=$$(date +%s); ansible-playbook -i $(INVENTORY) playbooks/site.yml && echo "[demo] site.yml: $$(( $$(date +%s) - s )) s"
	@python scripts/demo.py

demo-down: ## stop the demo's port-forwards (the cluster keeps running)
	@python scripts/demo.py --stop

demo-password: ## print the demo login's password (user admin)
	@$(CLUSTER_KUBECTL) -n airflow get secret airflow-airflow-passwords -o jsonpath='{.data.admin}' | base64 -d; echo

test: deps venv collection-link ## run every test (what CI runs)
	@failed=""; for t in $(TESTS); do \
	  echo "=== make $$t"; s=$$(date +%s); \
	  $(MAKE) --no-print-directory $$t || failed="$$failed $$t"; \
	  echo "=== make $$t: $$(( $$(date +%s) - s )) s"; \
	done; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed"; exit 1; fi; echo "all test targets passed"

test-static: venv collection-link ## yamllint, ansible-lint (production profile), ruff, syntax checks, ansible-test sanity, docs site, changelog
	yamllint --strict .
	ansible-lint --profile production
	ruff check .
	@for p in playbooks/*.yml; do ansible-playbook -i $(INVENTORY) --syntax-check $$p >/dev/null || exit 1; done; echo "syntax-check ok"
	@# Every module, filter and test is documented (filters and tests in their .yml sidecars).
	@for m in plugins/modules/*.py; do ansible-doc elastic_airflow.cluster.$$(basename $$m .py) >/dev/null || exit 1; done; \
	for t in filter test; do for d in plugins/$$t/*.yml; do ansible-doc -t $$t elastic_airflow.cluster.$$(basename $$d .yml) >/dev/null || exit 1; done; done; \
	echo "ansible-doc ok"
	@# The built tarball installs offline into an empty collections path and its playbooks load from there.
	@tmp=$$(mktemp -d) && ansible-galaxy collection build --force --output-path $$tmp >/dev/null \
	  && ANSIBLE_COLLECTIONS_PATH=$$tmp/installed ansible-galaxy collection install --offline --no-deps -p $$tmp/installed $$tmp/elastic_airflow-cluster-*.tar.gz >/dev/null \
	  && (cd $$tmp && ANSIBLE_COLLECTIONS_PATH=$$tmp/installed ansible-playbook -i $(CURDIR)/$(INVENTORY) elastic_airflow.cluster.site --syntax-check >/dev/null) \
	  && echo "collection build + offline install + site.yml from the install ok"; rc=$$?; rm -rf $$tmp; exit $$rc
	@# Collection conventions (issue 16): each says how long it took.
	@for t in sanity docs-check changelog-check; do s=$$(date +%s); \
	  $(MAKE) --no-print-directory $$t || exit 1; echo "[test-static] $$t: $$(( $$(date +%s) - s )) s"; done

test-unit: venv collection-link ## unit tests of the pure Python logic
	pytest -q tests/unit

# --- The local control plane's own tests (tests/cluster, issue 2) -----------
.PHONY: test-cluster test-cluster-lifecycle molecule-local

# Runs against the shared cluster: starts it if it is not up, and then stops
# it again, so the cluster is left as it was found.
test-cluster: deps venv ## control plane (KWOK) and real node tests (probes, logs/exec/port-forward, DNS, tokens, volumes, preStop, OOM)
	@started=; if ! $(CLUSTER) status >/dev/null 2>&1; then $(CLUSTER) up >/dev/null || exit 1; started=1; fi; \
	rc=0; $(MAKE) --no-print-directory images && \
	pytest -v -p no:cacheprovider tests/cluster/test_cluster.py tests/cluster/test_real_node.py || rc=$$?; \
	if [ -n "$$started" ]; then $(CLUSTER) down; fi; exit $$rc

# A private cluster (own state dir and ports): up, status, up again, down, then
# checks that no process of it runs and no port of it listens.
test-cluster-lifecycle: venv ## cluster.sh up/status/down leave nothing behind (private cluster)
	pytest -v -s -p no:cacheprovider tests/cluster/test_lifecycle.py

molecule-local: venv collection-link ## molecule test on the local cluster (ELASTIC_AIRFLOW_MOLECULE_CLUSTER=local; plain `molecule test` uses kind)
	ELASTIC_AIRFLOW_MOLECULE_CLUSTER=local molecule test

.PHONY: test-playbooks bench-converge

test-playbooks: venv collection-link cluster-up ## site.yml on the local cluster: converge, idempotence, check mode, bad input, no secrets
	pytest -q -p no:cacheprovider tests/integration/playbooks

bench-converge: venv collection-link cluster-up ## site.yml on the real node against kubectl apply --server-side + kubectl wait of the same manifests (exits 1 if a target is missed)
	python benchmarks/bench_converge.py

# --- Safe Celery worker drain (issue 4) -----------------------------------------
.PHONY: test-drain test-drain-playbook bench-drain

# Starts Redis and RabbitMQ through tests/services/services.sh if they are not
# running (and stops again what it started); real Celery worker processes.
test-drain: venv ## drain: real Redis/RabbitMQ/Celery workers and the module through ansible (its unit tests are in test-unit)
	pytest -v -p no:cacheprovider --deselect tests/integration/drain/test_drain_playbook.py tests/integration/drain

test-drain-playbook: venv ## playbooks/drain.yml on a private local control plane (KWOK StatefulSet pods + real Celery workers on Redis)
	pytest -v -s -p no:cacheprovider tests/integration/drain/test_drain_playbook.py

bench-drain: venv ## seconds to drain an idle Celery worker on real Redis and RabbitMQ (target <= 5 s; exits 1 if missed)
	$(PY) benchmarks/bench_drain.py

# --- Autoscaling against KEDA and fixed fleets (issue 17) ---------------------------
.PHONY: bench-autoscale
BENCH_AUTOSCALE_ARGS ?=

# Not part of `make bench` (CI) nor `make test`: on the shared cluster's real
# node it deploys Airflow four times (elastic, keda, fixed-max, fixed-min, in
# turn, one namespace each) and runs two seeded workloads in each; about
# 100 min for one repetition. KEDA's images are built on first use (a cold
# build takes many minutes) and imported with the local inventory's. Writes
# docs/performance.md and docs/performance-autoscale.png; exits 1 when a
# target is missed. `python benchmarks/bench_autoscale.py --dry-run` prints
# what it would run. BENCH_AUTOSCALE_ARGS: e.g. --repetitions 2, --modes elastic,keda.
# Then, from the same target (issue 17's "also measured"): the idle-worker
# drain (bench-drain) and one controller pass over 1,000 and 5,000 KWOK pods.
bench-autoscale: venv collection-link cluster-up images ## elastic vs KEDA (the chart's setup) vs fixed fleets on real Airflow: cost, queue wait, scale-out/in, lost tasks (~100 min; exits 1 if a target is missed)
	nice -n 19 images/build.sh --import $(CLUSTER_CONTAINERD_SOCK) keda-operator keda-metrics-apiserver
	$(VENV)/bin/pip install --quiet -r benchmarks/autoscale/requirements.txt
	rc=0; python benchmarks/bench_autoscale.py --docs $(BENCH_AUTOSCALE_ARGS) || rc=1; \
	python benchmarks/bench_drain.py || rc=1; \
	for pods in 1000 5000; do python benchmarks/bench_controller.py --pods $$pods --no-latency || rc=1; done; \
	exit $$rc

# --- Every benchmark ------------------------------------------------------------
.PHONY: bench
BENCHMARKS := bench-drain bench-controller bench-converge

# Runs each benchmark to its end even when an earlier one missed a target,
# keeps the output in $(CACHE)/bench/, and exits 1 when any target was missed.
# .ci/run runs it after the tests without failing CI on it (timings on a
# shared 2-core VM are evidence, not a gate).
bench: venv collection-link ## every benchmark; exits 1 when a target is missed; output kept in $(CACHE)/bench
	@mkdir -p $(CACHE)/bench; log=$(CACHE)/bench/$$(date -u +%Y%m%dT%H%M%SZ)-$$(git rev-parse --short HEAD 2>/dev/null || echo nogit).log; \
	missed=""; for b in $(BENCHMARKS); do \
	  echo "=== make $$b" | tee -a $$log; \
	  $(MAKE) --no-print-directory $$b 2>&1 | tee -a $$log; [ $${PIPESTATUS[0]} = 0 ] || missed="$$missed $$b"; \
	done; echo "benchmark output kept in $$log"; \
	if [ -n "$$missed" ]; then echo "MISSED a target:$$missed"; exit 1; fi; echo "every benchmark met its targets"

# --- monitoring and metrics_adapter layers (issue 3) ---------------------------
.PHONY: test-monitoring monitoring-tools

# Prometheus v3.5.0 is the Go module version v0.305.0.
PROMETHEUS_VERSION := 3.5.0
PROMETHEUS_MODULE_VERSION := v0.305.0
STATSD_EXPORTER_VERSION := v0.28.0
PROMTOOL_BIN := $(CACHE)/tools/promtool-v$(PROMETHEUS_VERSION)/promtool
STATSD_EXPORTER_BIN := $(CACHE)/tools/statsd_exporter-$(STATSD_EXPORTER_VERSION)/statsd_exporter

# Built once from the Go module proxy and cached. Debian's promtool cannot
# check our prometheus.yml (it is built without Kubernetes service discovery),
# and promtool cannot be `go install`ed (Prometheus's go.mod has a replace
# directive): build it in a throwaway main module with the same replace.
$(PROMTOOL_BIN):
	@set -e; mkdir -p $(@D); d=$$(mktemp -d); trap 'rm -rf "$$d"' EXIT; cd "$$d"; \
	printf 'module promtool-build\n\ngo 1.24\n\nreplace github.com/fsnotify/fsnotify v1.8.0 => github.com/fsnotify/fsnotify v1.7.0\n' > go.mod; \
	echo "building promtool $(PROMETHEUS_VERSION) (cold: several minutes)"; \
	go get github.com/prometheus/prometheus/cmd/promtool@$(PROMETHEUS_MODULE_VERSION); \
	CGO_ENABLED=0 go build -trimpath -o $@.tmp \
	  -ldflags "-X github.com/prometheus/common/version.Version=$(PROMETHEUS_VERSION)" \
	  github.com/prometheus/prometheus/cmd/promtool; \
	mv $@.tmp $@

$(STATSD_EXPORTER_BIN):
	GOBIN=$(@D) CGO_ENABLED=0 go install -trimpath \
	  -ldflags "-X github.com/prometheus/common/version.Version=$(STATSD_EXPORTER_VERSION:v%=%)" \
	  github.com/prometheus/statsd_exporter@$(STATSD_EXPORTER_VERSION)

monitoring-tools: $(PROMTOOL_BIN) $(STATSD_EXPORTER_BIN) ## build promtool and statsd_exporter (cached)

test-monitoring: venv monitoring-tools ## dashboards vs scraped metrics, promtool check config/rules, statsd mapping in statsd_exporter
	PROMTOOL=$(PROMTOOL_BIN) STATSD_EXPORTER=$(STATSD_EXPORTER_BIN) pytest -v -p no:cacheprovider tests/monitoring

# ---- elastic_worker (ElasticWorker controller) --------------------------------
.PHONY: test-elastic bench-controller
test-elastic: venv ## ElasticWorker controller on the cluster with real Celery/Redis (its unit tests are in test-unit)
	$(CLUSTER) status >/dev/null || $(CLUSTER) up
	tests/services/services.sh start redis
	pytest -v -p no:cacheprovider tests/integration/elastic

bench-controller: venv ## ElasticWorker controller: one reconcile over 1,000 pods (CPU, API calls, RSS) + scale-in latency
	$(CLUSTER) status >/dev/null || $(CLUSTER) up
	tests/services/services.sh start redis
	python benchmarks/bench_controller.py

# --- Real Airflow 3 end to end, in real pods (issues 6, 13) -----------------------
.PHONY: test-e2e test-e2e-pods test-chaos test-worker-pools test-pgbouncer

# site.yml on the real node, driven through Airflow's REST API and its UI.
# Namespace e2e-pods (PostgreSQL, Redis, the ElasticWorker): bursts scaled out
# and in by the controller in its pods, a busy worker deleted, a SIGKILLed
# task, a rolling template change, a login in headless Chromium. Then, in a
# second pytest session (to fit the 2-core node once the first namespace is
# going), namespace e2e-pods-my (MariaDB, RabbitMQ, a fixed StatefulSet):
# a DAG run, and playbooks/drain.yml draining two busy workers.
test-e2e: venv collection-link cluster-up images ## Airflow end to end in real pods: scale out/in through drained workers, deleted busy worker, SIGKILLed task, rolling change, UI login, MariaDB+RabbitMQ, drain.yml
	pytest -v -s -p no:cacheprovider tests/integration/e2e_pods/test_real_pods.py tests/integration/e2e_pods/test_ui.py
	pytest -v -s -p no:cacheprovider tests/integration/e2e_pods/test_mysql_rabbitmq.py

test-e2e-pods: test-e2e ## the former name of test-e2e

# The same deployment, with one fault per case under a seeded workload of 30
# task runs: the leader controller killed or frozen, the API server, etcd,
# the broker, the kubelet and containerd restarted, the controller cut off
# from the broker. About 30 minutes; not part of `make test`.
test-chaos: venv collection-link cluster-up images ## fault injection on the real node: no task lost or run twice, convergence (table at the end)
	pytest -v -s -p no:cacheprovider tests/integration/e2e_pods/test_chaos.py

# Worker pools (airflow_worker_pools) in their own namespace, e2e-pods-pools
# (PostgreSQL, Redis, mode elastic, pools `fast` and `slow` of one-slot
# workers): a task with queue= runs on its pool's worker and one without on
# the main workers, and a burst of four tasks on `fast` scales only that pool
# out (and back in). About 10 minutes; not part of `make test`.
test-worker-pools: venv collection-link cluster-up images ## worker pools on the real node: each queue's tasks on its pool, a burst scales only its pool
	pytest -v -s -p no:cacheprovider tests/integration/e2e_pods/test_worker_pools.py

# PgBouncer in front of PostgreSQL (database_pgbouncer) in its own namespace,
# e2e-pods-pgb: site.yml (and a re-run with changed=0), three DAG runs to
# success, PostgreSQL's clients only the PgBouncer pods, PgBouncer's the
# Airflow pods (SHOW CLIENTS, SHOW POOLS), the migrate Job alone direct. About
# 10 minutes; not part of `make test` or `make test-e2e` (run it when their
# namespaces are gone, to fit the 2-core node).
test-pgbouncer: venv collection-link cluster-up images ## PgBouncer in real pods: a DAG through it, every Airflow connection via PgBouncer, migrate direct
	pytest -v -s -p no:cacheprovider tests/integration/e2e_pods/test_pgbouncer.py

# --- Images without a registry (images/, docs/images.md) ---------------------------
.PHONY: images test-images keda-images
CLUSTER_CONTAINERD_SOCK := $(CACHE)/run/cluster/containerd/containerd.sock

# Builds every image the local inventory deploys (cached by content: a re-run
# with nothing changed takes seconds) and, when the local cluster is up,
# imports them into its node's containerd (skipped per image at the same digest).
images: ## build the local cluster's images (no Docker, no registry) and import them into its containerd if it is up
	@if [ -S $(CLUSTER_CONTAINERD_SOCK) ]; then images/build.sh --import $(CLUSTER_CONTAINERD_SOCK); \
	else images/build.sh && echo "images: the local cluster is not up (no $(CLUSTER_CONTAINERD_SOCK)): built, not imported"; fi

# KEDA's operator and metrics API server, for the KEDA benchmark (issue 17):
# not deployed by the local inventory, so not part of `images`. Built only (a
# cold build downloads and compiles KEDA's dependencies: many minutes); to
# import: images/build.sh --import $(CLUSTER_CONTAINERD_SOCK) keda-operator keda-metrics-apiserver
keda-images: ## build KEDA's operator and metrics API server images (not imported)
	nice -n 19 images/build.sh keda-operator keda-metrics-apiserver

# Runs each image with `ctr run` as our manifests run it and checks the
# contract (user, entrypoint, ports, probes, airflow db migrate on the
# postgresql image). A private containerd unless ELASTIC_AIRFLOW_IMAGES_CONTAINERD
# names the socket of one that holds the images.
test-images: venv ## run every image under containerd and check the contract our manifests rely on
	pytest -v -p no:cacheprovider images/test_images.py

# --- Collection conventions (issue 16) ------------------------------------------
.PHONY: sanity docs docs-check changelog changelog-check

# $(call copy_collection,DIR): the collection as it ships (what git tracks or
# would track, less galaxy.yml's build_ignore) in DIR/ansible_collections/elastic_airflow/cluster.
copy_collection = rm -rf $(1) && mkdir -p $(1)/ansible_collections/elastic_airflow/cluster \
	&& git ls-files -co --exclude-standard | grep -v -E '^(\.ci|benchmarks|images)/' \
	| rsync -a --ignore-missing-args --files-from=- ./ $(1)/ansible_collections/elastic_airflow/cluster/

# ansible-test wants the collection at .../ansible_collections/elastic_airflow/cluster
# and resolves symlinks (the collection-link path leads back here), so it runs on a
# copy: the files git tracks or would track, less what galaxy.yml's build_ignore
# keeps out of the collection (.ci, benchmarks, images), next to a link to the
# kubernetes.core that the venv's ansible package ships (our doc fragment and
# module_utils come from it). No Docker here: --local runs the tests from this
# venv; ansible-test still gives each test with pinned requirements its own venv
# under ~/.ansible/test/venv (cached), which it bootstraps with a get-pip.py it
# cannot download here (scripts/ansible_test_get_pip.py stands in for it).
# Only this venv's Python (3.11) is checked: no other Python is installed.
# shellcheck is skipped: tests/cluster/*.sh and tests/services/services.sh have
# some 240 findings, a separate piece of work (and Debian's shellcheck is not a dependency).
SANITY_ROOT := $(CACHE)/sanity-$(CHECKOUT_KEY)
SANITY_TREE := $(SANITY_ROOT)/ansible_collections/elastic_airflow/cluster
sanity: venv ## ansible-test sanity on a copy of the collection (--local, this venv's Python only)
	@set -e; $(call copy_collection,$(SANITY_ROOT)); mkdir -p $(SANITY_ROOT)/ansible_collections/kubernetes; \
	ln -sfn "$$($(PY) -c 'import ansible, os; print(os.path.dirname(os.path.dirname(ansible.__file__)))')/ansible_collections/kubernetes/core" \
	  $(SANITY_ROOT)/ansible_collections/kubernetes/core; \
	pyv=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	pip_version=$$($(PY) -c 'import sys, types; from ansible_test._internal.python_requirements import get_venv_packages as g; \
	  print(g(types.SimpleNamespace(version=sys.argv[1]))["pip"])' $$pyv); \
	get_pip=$$HOME/.ansible/test/cache/get_pip_$${pip_version//./_}.py; \
	if [ ! -e $$get_pip ] || grep -q 'Stand-in for the get-pip.py' $$get_pip; then \
	  install -D -m 644 scripts/ansible_test_get_pip.py $$get_pip; fi; \
	cd $(SANITY_TREE) && ansible-test sanity --local --color no --skip-test shellcheck --python $$pyv $(SANITY_ARGS)

# The documentation site: antsibull-docs writes the RST of every module,
# plugin, filter, test and role (meta/argument_specs.yml) of the collection as
# ansible-doc sees it through collection-link, next to docs/site/index.rst;
# Sphinx (docs/site/conf.py) builds it into $(DOCS_DIR)/html, failing on any
# warning and reading nothing from the network.
DOCS_DIR := $(CACHE)/docs-$(CHECKOUT_KEY)
docs: venv collection-link ## the collection's documentation site (antsibull-docs, Sphinx) in ~/.cache/elastic-airflow/docs-<checkout>/html
	@set -e; rm -rf $(DOCS_DIR); mkdir -p $(DOCS_DIR)/rst; chmod og-w $(DOCS_DIR)/rst; cp docs/site/index.rst $(DOCS_DIR)/rst/; \
	antsibull-docs collection --use-current --fail-on-error --dest-dir $(DOCS_DIR)/rst elastic_airflow.cluster >/dev/null; \
	sphinx-build -q -W --keep-going -j auto -b html -c docs/site $(DOCS_DIR)/rst $(DOCS_DIR)/html; \
	echo "docs: file://$(DOCS_DIR)/html/index.html"

# Opens pages of the built site in Debian's headless chromium from file://,
# with name resolution and proxy pointed at nothing (tests/docs/test_docsite.py).
docs-check: docs ## render the built site's index, a module and a role page in headless Chromium (no network)
	@command -v chromium >/dev/null || { echo "docs-check needs Debian's chromium (make deps)"; exit 1; }
	ELASTIC_AIRFLOW_DOCS_HTML=$(DOCS_DIR)/html pytest -q -p no:cacheprovider tests/docs

# Unreleased changes are fragments in changelogs/fragments/ and changelog.yaml
# records releases (none yet). CHANGELOG.rst shows the fragments as the next
# release, galaxy.yml's version: antsibull-changelog releases it in a copy of
# the collection (which it needs to list the new plugins), and only
# CHANGELOG.rst comes back; changelog.yaml and the fragments stay as they are.
changelog_render = tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && $(call copy_collection,$$tmp) \
	&& (cd $$tmp/ansible_collections/elastic_airflow/cluster \
	    && antsibull-changelog release --version "$$($(PY) -c 'import yaml; print(yaml.safe_load(open("galaxy.yml"))["version"])')" \
	       >$$tmp/release.log 2>&1 || { cat $$tmp/release.log; exit 1; }) \
	&& cp $$tmp/ansible_collections/elastic_airflow/cluster/CHANGELOG.rst
changelog: venv ## render changelogs/fragments into CHANGELOG.rst (as galaxy.yml's version, not released)
	@set -e; antsibull-changelog lint; $(changelog_render) CHANGELOG.rst; echo "CHANGELOG.rst rendered"

changelog-check: venv ## antsibull-changelog lint, and CHANGELOG.rst is what make changelog renders
	@set -e; antsibull-changelog lint; antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml; \
	$(changelog_render) $$tmp/rendered.rst; \
	cmp -s $$tmp/rendered.rst CHANGELOG.rst || { echo "CHANGELOG.rst is not what the fragments render: run make changelog"; exit 1; }; \
	echo "changelog ok"
