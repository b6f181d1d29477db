# edgecam — the user's entry points. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
CONFIG ?= config/device.example.yaml
DATA ?=
RUN ?=
NAME ?=
EXTRA_ARGS ?=
MODELS_DIR ?= models
# test files run in this many processes (most tests wait on brokers, servers and subprocesses)
TEST_JOBS ?= 2
HOSTS ?=
LIMIT ?=
MODEL ?=

.PHONY: help install install-device system-deps models run test lint format bench bench-motion bench-privacy bench-ingest bench-fleet train convert retrain deploy test-fleet test-arm64 clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: system-deps $(PY)  ## workstation: venv with device + training + dev tools, and Mosquitto
	$(BIN)/pip install --quiet -e '.[device,train,dev,deploy]'
	@echo "installed into $(VENV); try: make models && make run"

install-device: $(PY)  ## Raspberry Pi: the light device runtime only (no TensorFlow)
	$(BIN)/pip install --quiet -e '.[device]'

system-deps:  ## Mosquitto (the MQTT broker the tests and `make run` use) from apt
	@bash deploy/system-deps.sh

models: $(PY)  ## fetch the reference model, labels, sample clip and face detectors into models/ (sha256-checked)
	$(PY) -m device.fetch --dest $(MODELS_DIR)

run: $(PY)  ## run the camera loop (Pi camera, USB camera or the sample clip) with the example config
	@test -f $(MODELS_DIR)/mobilenet_v2_1.0_224_quant.tflite || $(MAKE) models
	$(BIN)/edgecam-device run --config $(CONFIG) $(EXTRA_ARGS)

test: $(PY)  ## run the test suite (real Mosquitto, real LiteRT, real training on small data)
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile

test-fleet: $(PY)  ## Ansible rollout against three local sshd "Pis" (about a minute; needs root, openssh-server)
	$(PY) -m pytest -q -m fleet tests/deploy

test-arm64: $(PY)  ## install.sh twice in a Debian arm64 root under qemu, then classify (many minutes; root)
	$(PY) -m pytest -q -s -m arm64 tests/deploy

deploy: $(PY)  ## roll out over SSH: make deploy HOSTS=inventory.yml [LIMIT=pi-1,pi-2] [MODEL=bundle]
	@test -n "$(HOSTS)" || (echo "usage: make deploy HOSTS=inventory.yml [LIMIT=host,...] [MODEL=models/<name>/<variant>]" >&2; exit 2)
	@test -x $(BIN)/ansible-playbook || $(BIN)/pip install --quiet -e '.[deploy]'
	ANSIBLE_CONFIG=deploy/ansible/ansible.cfg $(BIN)/ansible-playbook -i '$(HOSTS)' deploy/ansible/site.yml \
		$(if $(LIMIT),--limit '$(LIMIT)') $(if $(MODEL),-e 'edgecam_model=$(abspath $(MODEL))') $(EXTRA_ARGS)

lint: $(PY)  ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(PY)  ## ruff autoformat
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(PY)  ## device loop benchmark on the sample clip with the reference model
	@test -f $(MODELS_DIR)/mobilenet_v2_1.0_224_quant.tflite || $(MAKE) models
	$(BIN)/edgecam-device bench --model $(MODELS_DIR)/mobilenet_v2_1.0_224_quant.tflite \
		--source $(MODELS_DIR)/vtest.avi --frames 300 --rounds 3 --thread-counts 1 2

bench-motion: $(PY)  ## motion gating: CPU per video minute with and without it on a mostly still clip, alerts kept
	@test -f $(MODELS_DIR)/mobilenet_v2_1.0_224_quant.tflite || $(MAKE) models
	$(BIN)/edgecam-device bench --motion --model $(MODELS_DIR)/mobilenet_v2_1.0_224_quant.tflite \
		--labels $(MODELS_DIR)/imagenet_labels.txt --source $(MODELS_DIR)/vtest.avi --threads 1 \
		$(EXTRA_ARGS)

bench-privacy: $(PY)  ## face redaction: cost per image (short vs full range) and the loop rate with it on and off
	@test -f $(MODELS_DIR)/face_detection_full_range_sparse.tflite || $(MAKE) models
	$(BIN)/edgecam-device bench --privacy --model $(MODELS_DIR)/mobilenet_v2_1.0_224_quant.tflite \
		--source $(MODELS_DIR)/vtest.avi --frames 300 --threads 2

bench-ingest: $(PY)  ## ingest server: uploads/s from 50 simulated devices (50 KB JPEGs), peak RSS
	$(PY) -m training.ingest.bench $(EXTRA_ARGS)

bench-fleet: $(PY)  ## 1,000 simulated devices on a local Mosquitto: msgs/s, broker CPU/RAM, fleet view
	EDGECAM_BENCH=1 $(PY) -m pytest -q -s -p no:cacheprovider tests/device/test_fleet_load.py

train: $(PY)  ## train a classifier: make train DATA=path/to/images [NAME=run-name]
	@test -n "$(DATA)" || (echo "usage: make train DATA=path/to/images [NAME=run-name]" >&2; exit 2)
	$(BIN)/edgecam-train train $(DATA) $(if $(NAME),--name $(NAME)) $(EXTRA_ARGS)

convert: $(PY)  ## convert a trained run to TFLite bundles: make convert RUN=runs/<name>
	@test -n "$(RUN)" || (echo "usage: make convert RUN=runs/<name>" >&2; exit 2)
	$(BIN)/edgecam-convert $(RUN) $(EXTRA_ARGS)

retrain: $(PY)  ## fine-tune a run on a merged dataset, convert, verify, compare: make retrain RUN=runs/<name> DATA=...
	@test -n "$(RUN)" -a -n "$(DATA)" || (echo "usage: make retrain RUN=runs/<name> DATA=path/to/images [NAME=new-run]" >&2; exit 2)
	$(BIN)/edgecam-train retrain $(RUN) $(DATA) $(if $(NAME),--name $(NAME)) $(EXTRA_ARGS)

clean:  ## remove caches and build leftovers (keeps .venv, models/ and runs/)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
