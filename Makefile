# tagcache: build, run and test the Redis module.
#   make run     build, then serve on 127.0.0.1:6379 in the foreground (Ctrl-C stops)
#   make test    unit tests, then the integration suite on every server found

CARGO   ?= cargo
PYTHON  ?= python3
PORT    ?= 6379
SERVER  ?= redis-server

MODULE  := target/release/libredis_tagcache.so
RUN_DIR := target/tagcache-run

.DEFAULT_GOAL := help
.PHONY: help prereqs build run test unit-test integration-test bench lint clean

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

prereqs: ## check (and as root on Debian, install) the tools the build and the tests need
	@PYTHON=$(PYTHON) scripts/prereqs.sh test

build: ## build target/release/libredis_tagcache.so
	$(CARGO) build --release

run: ## build, then run redis-server with the module on 127.0.0.1 (PORT=6379) in the foreground; Ctrl-C stops it
	@PYTHON=$(PYTHON) scripts/prereqs.sh run
	$(CARGO) build --release
	@mkdir -p $(RUN_DIR)
	@# A copy: rebuilding never overwrites the file the server has loaded.
	cp $(MODULE) $(RUN_DIR)/libredis_tagcache.so
	sed 's|@MODULE_PATH@|$(abspath $(RUN_DIR))/libredis_tagcache.so|' redis.conf.example > $(RUN_DIR)/redis.conf
	cd $(RUN_DIR) && exec $(SERVER) ./redis.conf --port $(PORT) --dir $(abspath $(RUN_DIR))

test: prereqs build unit-test integration-test ## unit tests, then the integration suite on Redis 7.0, Redis 8.2 and Valkey 9.1 where found

unit-test: ## cargo test
	$(CARGO) test --release

integration-test: ## the Python suite against every server binary found (PYTEST_ARGS="-k purge" to narrow)
	@PYTHON=$(PYTHON) scripts/test-matrix.sh $(PYTEST_ARGS)

bench: build ## run the benchmarks (bench/bench.py)
	$(PYTHON) bench/bench.py

lint: ## cargo fmt --check and clippy with warnings as errors (adds rustfmt and clippy with rustup if missing)
	@PYTHON=$(PYTHON) scripts/prereqs.sh lint
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

clean: ## remove build output and test results
	$(CARGO) clean
	rm -rf tests/__pycache__ tests/.pytest_cache .pytest_cache
