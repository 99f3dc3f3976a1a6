# chainmend: see README.md. Two commands matter: `make run` and `make test`.
GO ?= go
BIN := bin
POLICIES ?= policies
GOFLAGS_TEST ?= -count=1

.PHONY: demo emulator all build run test test-unit test-race vet fmt-check deps-redis bench fuzz fuzz-short check-policies policytest clean e2e-codex deps-codex deps-npm deps-node-sdk e2e-node-sdk build-debug load

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
# under -race (Redis, the Redis Cluster, every Codex CLI release of CODEX_VERSIONS and the
# official Node SDK included: deps-redis, deps-codex and deps-node-sdk install what is
# missing), the debug build's end-to-end suite, and a short fuzz pass of each parser.
test: deps-redis deps-codex deps-node-sdk fmt-check vet check-policies policytest
	CHAINMEND_CODEX="$(CODEX_BINS)" CHAINMEND_OPENAI_NODE=$(abspath $(OPENAI_NODE_DIR)) $(GO) test $(GOFLAGS_TEST) -race ./...
	$(GO) test $(GOFLAGS_TEST) -race -tags debug ./gateway/
	$(MAKE) fuzz-short

# deps-npm installs npm (and with it node, when that is missing too) from Debian packages;
# the machine's own node is used when there is one.
deps-npm:
	@command -v npm >/dev/null 2>&1 || { echo "installing npm"; (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }

# e2e-codex runs the real Codex CLI through the gateway (e2e/codex_test.go), once per release
# of CODEX_VERSIONS (subtests named by version), and replays the captures. deps-codex installs
# each @openai/codex@VERSION from the npm registry into its own $(CODEX_CACHE)/codex-VERSION
# when that version is not there yet (the package ships its native binary in an optional
# dependency, @openai/codex-<platform>; no install scripts run). Separate directories keep
# one release's platform package from resolving for another. CHAINMEND_CODEX_CAPTURE=1
# rewrites testdata/codex/codex-VERSION-gateway-*.json from what each release sent.
CODEX_VERSIONS ?= 0.169.0 0.171.0
CODEX_CACHE ?= .cache
codex_bin = $(abspath $(CODEX_CACHE)/codex-$(1)/node_modules/.bin/codex)
empty :=
space := $(empty) $(empty)
# CHAINMEND_CODEX takes a list of binaries, separated like PATH.
CODEX_BINS = $(subst $(space),:,$(strip $(foreach v,$(CODEX_VERSIONS),$(call codex_bin,$(v)))))

deps-codex: deps-npm
	@for v in $(CODEX_VERSIONS); do \
	  dir=$(CODEX_CACHE)/codex-$$v; bin=$$dir/node_modules/.bin/codex; \
	  if ! $$bin --version 2>/dev/null | grep -qx "codex-cli $$v"; then \
	    echo "installing @openai/codex@$$v into $$dir"; \
	    mkdir -p $$dir && \
	    npm install --prefix $$dir --no-save --no-package-lock --no-audit --no-fund --loglevel=error @openai/codex@$$v && \
	    $$bin --version | grep -qx "codex-cli $$v" || exit 1; \
	  fi; \
	done

e2e-codex: deps-codex
	CHAINMEND_CODEX="$(CODEX_BINS)" $(GO) test $(GOFLAGS_TEST) -race -run '^TestCodex' -v ./e2e/

# deps-node-sdk installs the official Node SDK, npm openai@$(OPENAI_NODE_VERSION), into
# $(OPENAI_NODE_DIR) when that version is not there yet, with ws, the optional peer dependency
# its Node WebSocket transport (ResponsesWS) loads. No install scripts run. e2e/sdk_test.go
# drives it through the gateway; e2e-node-sdk runs only that.
OPENAI_NODE_VERSION ?= 7.60.0
OPENAI_NODE_WS_VERSION ?= 8.23.1
OPENAI_NODE_DIR ?= .cache/openai-node

deps-node-sdk: deps-npm
	@m=$(OPENAI_NODE_DIR)/node_modules; \
	if ! grep -qs '"version": "$(OPENAI_NODE_VERSION)"' $$m/openai/package.json || \
	   ! grep -qs '"version": "$(OPENAI_NODE_WS_VERSION)"' $$m/ws/package.json; then \
	  echo "installing openai@$(OPENAI_NODE_VERSION) and ws@$(OPENAI_NODE_WS_VERSION) into $(OPENAI_NODE_DIR)"; \
	  mkdir -p $(OPENAI_NODE_DIR) && \
	  npm install --prefix $(OPENAI_NODE_DIR) --no-save --no-package-lock --ignore-scripts --no-audit --no-fund --loglevel=error \
	    openai@$(OPENAI_NODE_VERSION) ws@$(OPENAI_NODE_WS_VERSION) && \
	  grep -qs '"version": "$(OPENAI_NODE_VERSION)"' $$m/openai/package.json || exit 1; \
	fi

e2e-node-sdk: deps-node-sdk deps-redis
	CHAINMEND_OPENAI_NODE=$(abspath $(OPENAI_NODE_DIR)) $(GO) test $(GOFLAGS_TEST) -race -run '^TestNodeSDK' -v ./e2e/

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

check-policies: build
	$(BIN)/policyctl validate $(POLICIES)

policytest: build
	$(BIN)/policyctl test --coverage --policies $(POLICIES) policytests

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./responses/ ./engine/ ./statestore/ ./emulator/ ./gateway/

# load runs the side-by-side load tool (issue 7, BENCHMARKS.md "Gateway path"; about two and
# a half minutes): Codex-shaped conversations against the emulator, direct and through the
# gateway, interleaved turn by turn, with a Redis store and a local one, two instances on one
# Redis, lanes (4 per socket), the saturation run, the streaming relay and idle sessions.
# LOADFLAGS adds flags: --json, --quick (a short smoke run), --profile --out DIR (CPU and
# allocation profiles of the gateway), --only REGEXP (phases by name: ws-small-1-, lanes,
# moved, throughput, stream, idle).
LOADFLAGS ?=
load:
	@$(MAKE) -s deps-redis >/dev/null
	$(GO) build -o $(BIN)/loadgen ./cmd/loadgen
	$(BIN)/loadgen --policies $(POLICIES) $(LOADFLAGS)

# Each fuzz target as package:Func. `make fuzz` runs each for FUZZTIME; `make test` runs each
# briefly (FUZZ_SHORT) so that the seed corpora in testdata/fuzz stay exercised.
FUZZ_TARGETS := responses:FuzzParseCreate responses:FuzzPatch responses:FuzzSSE responses:FuzzEvent responses:FuzzResponseObject responses:FuzzSkipString engine:FuzzCompile emulator:FuzzCreate
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
