package engine_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
	"chainmend/responses"
)

// fuzzSeedDir is the FuzzCompile seed corpus that `go test` always runs (Go's testdata/fuzz
// layout). It mirrors the default policies and the broken corpus; TestFuzzSeeds keeps it in
// step (`go test ./engine/ -run TestFuzzSeeds -update` rewrites it).
const fuzzSeedDir = "testdata/fuzz/FuzzCompile"

// fuzzSeeds returns the seed name and bytes of every default and broken policy file.
func fuzzSeeds(t testing.TB) map[string][]byte {
	t.Helper()
	seeds := map[string][]byte{}
	defaults, err := filepath.Glob(filepath.Join(defaultPolicies, "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, defaults)
	for _, f := range defaults {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		seeds["default-"+strings.TrimSuffix(filepath.Base(f), ".yaml")] = data
	}
	for _, f := range brokenFiles(t, "..") {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		seeds["broken-"+strings.TrimSuffix(filepath.Base(f), ".yaml")] = data
	}
	return seeds
}

// fuzzStall bounds one FuzzCompile input; a slower one is a bug (a policy that stalls reload).
const fuzzStall = 10 * time.Second

// corpusFile encodes one []byte input in the go fuzz corpus format.
func corpusFile(data []byte) []byte {
	return fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", data)
}

// TestFuzzSeeds: every default and broken policy is a stored FuzzCompile seed.
func TestFuzzSeeds(t *testing.T) {
	for name, data := range fuzzSeeds(t) {
		path := filepath.Join(fuzzSeedDir, name)
		if *update {
			require.NoError(t, os.MkdirAll(fuzzSeedDir, 0o755))
			require.NoError(t, os.WriteFile(path, corpusFile(data), 0o644))
			continue
		}
		// The stored seed may lag behind an edited policy: it is a starting point for the
		// fuzzer, and f.Add feeds the current files anyway. It must exist.
		_, err := os.Stat(path)
		assert.NoError(t, err, "missing seed %s (run with -update)", path)
	}
}

// FuzzCompile feeds arbitrary bytes to the compiler as a policy file. It must never panic,
// must refuse with at least one positioned error whenever it returns no snapshot, and a
// snapshot it returns must evaluate every entry stage without panicking. A NUL byte splits
// the input into two files, to reach the cross-file checks (duplicate ids, sub-stages, limits).
func FuzzCompile(f *testing.F) {
	for _, data := range fuzzSeeds(f) {
		f.Add(data)
	}
	f.Add([]byte("policy: a\nrules:\n  - {id: x, stage: pre_send, when: 'true', actions: [{run_stage: s}]}\n\x00" +
		"policy: b\nrules:\n  - {id: x, stage: s, when: 'true'}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		// A policy file must not stall the loader: a hang kills the worker, so the fuzzer
		// records the input as a crasher.
		watchdog := time.AfterFunc(fuzzStall, func() {
			panic(fmt.Sprintf("compile+evaluate of a %d-byte policy took over %s: %q", len(data), fuzzStall, data))
		})
		defer watchdog.Stop()
		var srcs []engine.Source
		for i, part := range bytes.SplitN(data, []byte{0}, 2) {
			srcs = append(srcs, engine.Source{Name: fmt.Sprintf("fuzz%d.yaml", i), Data: part})
		}
		snap, diags := engine.Compile(srcs)
		for _, d := range diags {
			if d.Pos.Line < 1 || d.Pos.Col < 1 || !strings.HasPrefix(d.Pos.File, "fuzz") {
				t.Errorf("diagnostic without a file position: %q", d.String())
			}
		}
		if snap == nil {
			if !diags.HasErrors() {
				t.Fatalf("no snapshot and no error: %q", diags.Error())
			}
			return
		}
		if diags.HasErrors() {
			t.Fatalf("a snapshot despite errors: %q", diags.Error())
		}
		for _, stage := range []string{engine.StagePreSend, engine.StageOnUpstreamError, engine.StagePostResponse} {
			req, err := responses.Parse([]byte(create("resp_1", fc("call_a"), fco("call_b", "ok"), msg("user", "hi"))))
			if err != nil {
				t.Fatal(err)
			}
			turn := &engine.Turn{Request: req, Mode: engine.ModeStrict, Transport: engine.TransportWebSocket, Number: 2,
				Anchor: "resp_1", Pending: engine.Pending{Known: true, ResponseID: "resp_1", Calls: []engine.PendingCall{{ID: "call_b", Kind: "custom_tool_call"}}},
				Replay: engine.Replay{Available: true, LastResponseID: "resp_1", Items: nil},
				Error:  &engine.UpstreamError{Status: 400, Code: "previous_response_not_found"}, Recovery: engine.Recovery{Enabled: true},
				Response: &engine.Response{ID: "resp_2", Status: "completed", Items: req.Items()[:1]}}
			out := snap.Evaluate(stage, turn, engine.WithDiffs())
			if _, err := responses.Parse(turn.Request.Bytes()); err != nil {
				t.Fatalf("stage %s left an unparsable request: %v\n%s", stage, err, turn.Request.Bytes())
			}
			_ = out
		}
	})
}
