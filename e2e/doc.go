// Package e2e holds the end-to-end suites that run chainmend as its operators do: the real
// gateway binary (built once per test run with `go build`), real Redis servers (standalone
// and a 3-master Cluster, from internal/redistest), the upstream emulator in process, and
// the real Codex CLI (SPEC R2, R5; issue 6).
//
//   - multi_test.go: two gateway processes on one Redis. A session moves from instance A to
//     instance B and B repairs its turns exactly as A would; a write on A is seen by B at
//     once; Redis dies mid-conversation (turns go on from local state) and comes back. The
//     same suite runs against the Cluster.
//   - staleredis_test.go: Redis pauses with its data intact, the instance writes back what it
//     committed meanwhile, and a session that moves is repaired against the current state.
//   - faults_*_test.go: faults under load (RELIABILITY.md): Redis killed, an instance
//     killed, upstream stalls and resets, clients that stop reading, 10,000 hostile frames;
//     faults_driver_test.go is their load driver.
//   - security_test.go: only the configured upstream is dialed, Redis password and TLS,
//     tenant isolation with another tenant's ids.
//   - codex_test.go: the real Codex CLI (`codex exec`) through the gateway against the
//     emulator: a plain tool loop, an upstream connection dropped after each completed
//     response, and a continuation refused with previous_response_not_found, once per
//     release of the Makefile's CODEX_VERSIONS (0.169.0, 0.171.0). CHAINMEND_CODEX lists the
//     codex binaries, separated like PATH (`make e2e-codex` installs each release into
//     .cache/codex-VERSION and sets it); under CI=true a missing one fails.
//   - sdk_test.go, sdk_reconnect_test.go: the official Node SDK (npm openai 7.60.0, installed
//     by `make deps-node-sdk` into .cache/openai-node): two lanes over one socket with an
//     upstream drop and an ESC on one lane; reconnects without session headers.
//   - lanes_test.go, tenants_test.go: lanes moving between instances; tenants scoped by every
//     credential header.
//   - capture_test.go: the frames Codex sent through the gateway (testdata/codex/
//     codex-0.169.0-gateway-*.json, written by the Codex suite with CHAINMEND_CODEX_CAPTURE=1)
//     replayed through the gateway against the emulator, with no Codex needed.
//
// The non-test files of this package are the shared helpers: building and starting the
// binaries and reading their metrics (proc.go) and a WebSocket client for the Responses API
// (client.go). The scripted models and the checks of what the emulator received are
// shared with the in-process suite of gateway/ and live in internal/e2etest.
//
// Under CI=true nothing skips: a missing redis-server or Codex fails the run. Elsewhere a
// missing tool skips loudly.
package e2e
