# chainmend: see README.md. Two commands matter: `make run` and `make test`.
GO ?= go
BIN := bin
POLICIES ?= policies
GOFLAGS_TEST ?= -count=1

.PHONY: demo emulator all build run test test-unit test-race vet fmt-check deps-redis bench fuzz fuzz-short check-policies policytest clean e2e-codex deps-codex build-debug load

all: build

build:
	$(GO) build -o $(BIN)/policyctl ./cmd/policyctl
	$(GO) build -o $(BIN)/gateway ./cmd/gateway
	$(GO) build -o $(BIN)/emulator ./cmd/emulator

# build-debug builds the strict-by-default gateway (SPEC §3: the debug build).
build-debug:
	$(GO) build -tags debug -o $(BIN)/gateway-debug ./cmd/gateway

# demo runs the gateway in front of the upstream emulator with a scripted client whose
# conversation breaks without the gateway (no network, no API key).
demo:
	$(GO) run ./cmd/demo --policies $(POLICIES)

# run starts the gateway on the default policies and the embedded local store.
run: build
	$(BIN)/gateway --policies $(POLICIES)

# deps-redis installs redis-server (and redis-cli) from Debian packages when missing;
# the Redis integration tests start their own servers on free loopback ports.
deps-redis:
	@command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || \
	  { echo "installing redis-server"; (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	@redis-server --version

# test runs everything: vet, gofmt, the policy checks, unit + integration + end-to-end tests
# under -race (Redis, the Redis Cluster and the real Codex CLI included: deps-redis and
# deps-codex install what is missing), the debug build's end-to-end suite, and a short fuzz
# pass of each parser.
test: deps-redis deps-codex fmt-check vet check-policies policytest
	CHAINMEND_CODEX=$(abspath $(CODEX_BIN)) $(GO) test $(GOFLAGS_TEST) -race ./...
	$(GO) test $(GOFLAGS_TEST) -race -tags debug ./gateway/
	$(MAKE) fuzz-short

# e2e-codex runs the real Codex CLI through the gateway (e2e/codex_test.go) and replays its
# captures. It installs @openai/codex@$(CODEX_VERSION) from the npm registry into $(CODEX_DIR)
# when that version is not there yet (the package ships its native binary in an optional
# dependency, @openai/codex-<platform>; no install scripts run). CHAINMEND_CODEX_CAPTURE=1
# rewrites testdata/codex/codex-$(CODEX_VERSION)-gateway-*.json from what Codex sent.
CODEX_VERSION ?= 0.169.0
CODEX_DIR ?= .cache/codex
CODEX_BIN = $(CODEX_DIR)/node_modules/.bin/codex

deps-codex:
	@command -v npm >/dev/null 2>&1 || { echo "installing npm"; (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
	@if ! $(CODEX_BIN) --version 2>/dev/null | grep -qx "codex-cli $(CODEX_VERSION)"; then \
	  echo "installing @openai/codex@$(CODEX_VERSION) into $(CODEX_DIR)"; \
	  mkdir -p $(CODEX_DIR) && \
	  npm install --prefix $(CODEX_DIR) --no-save --no-package-lock --no-audit --no-fund --loglevel=error @openai/codex@$(CODEX_VERSION) && \
	  $(CODEX_BIN) --version | grep -qx "codex-cli $(CODEX_VERSION)"; \
	fi

e2e-codex: deps-codex
	CHAINMEND_CODEX=$(abspath $(CODEX_BIN)) $(GO) test $(GOFLAGS_TEST) -race -run '^TestCodex' -v ./e2e/

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

check-policies: build
	$(BIN)/policyctl validate $(POLICIES)

policytest: build
	$(BIN)/policyctl test --policies $(POLICIES) policytests

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./responses/ ./engine/ ./statestore/ ./emulator/ ./gateway/

# load runs the side-by-side load tool (issue 7, BENCHMARKS.md "Gateway path"; about two and
# a half minutes): Codex-shaped conversations against the emulator, direct and through the
# gateway, interleaved turn by turn, with a Redis store and a local one, two instances on one
# Redis, the saturation run, the streaming relay and idle sessions. LOADFLAGS adds flags:
# --json, --quick (a short smoke run), --profile --out DIR (CPU and allocation profiles of
# the gateway), --only REGEXP (latency phases by name).
LOADFLAGS ?=
load:
	@$(MAKE) -s deps-redis >/dev/null
	$(GO) build -o $(BIN)/loadgen ./cmd/loadgen
	$(BIN)/loadgen --policies $(POLICIES) $(LOADFLAGS)

# Each fuzz target as package:Func. `make fuzz` runs each for FUZZTIME; `make test` runs each
# briefly (FUZZ_SHORT) so that the seed corpora in testdata/fuzz stay exercised.
FUZZ_TARGETS := responses:FuzzParseCreate responses:FuzzPatch responses:FuzzSSE responses:FuzzEvent engine:FuzzCompile emulator:FuzzCreate
FUZZTIME ?= 60s
# A count, not a duration: under load the fuzzer's baseline pass can outlast a short
# -fuzztime and end in "context deadline exceeded".
FUZZ_SHORT ?= 3000x

fuzz:
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; \
	  echo "fuzz $$fn ($$pkg) for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) ./$$pkg/ || exit 1; done

fuzz-short:
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; \
	  echo "fuzz $$fn ($$pkg) for $(FUZZ_SHORT)"; \
	  $(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZ_SHORT) ./$$pkg/ || exit 1; done

clean:
	rm -rf $(BIN)
