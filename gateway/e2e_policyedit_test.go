package gateway_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/gateway"
	"chainmend/internal/e2etest"
)

// editedPolicies copies the default policy set and applies each edit (old text → new text)
// to the file that holds it; an edit whose text is not found fails the test, so a reworded
// default set cannot make these tests pass vacuously.
func editedPolicies(t *testing.T, edits ...[2]string) string {
	t.Helper()
	dir := t.TempDir()
	files, err := filepath.Glob("../policies/*.yaml")
	require.NoError(t, err)
	applied := make([]bool, len(edits))
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		text := string(data)
		for i, e := range edits {
			if strings.Contains(text, e[0]) {
				text = strings.Replace(text, e[0], e[1], 1)
				applied[i] = true
			}
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.Base(f)), []byte(text), 0o644))
	}
	for i, ok := range applied {
		require.True(t, ok, "edit %q not found in the default policies", edits[i][0])
	}
	return dir
}

// The decisions the turn driver used to make in Go are rules now: editing the YAML changes
// each outcome end to end (issue 12). Each case runs the edited set against the behaviour the
// default set shows in the neighbouring tests.

func TestE2EPolicyEditTimeoutAnswer(t *testing.T) {
	t.Parallel()
	dir := editedPolicies(t, [2]string{`code: '"upstream_timeout"'`, `code: '"policy_timeout"'`},
		[2]string{`status: "504"`, `status: "503"`})
	s := newStack(t, e2etest.CmdScript(), withConfig(func(c *gateway.Config) {
		c.Policies = dir
		c.FirstEventTimeout = 300 * time.Millisecond
	}))
	c := s.dial("sess-edit-timeout")
	e1 := c.ok(create(nil, user("one")))
	s.emu.SetCreateFault(2, emulator.CreateFault{Stall: true})
	e := c.oneError(c.turn(chained(e1.Response.ID, user("two"))))
	assert.Equal(t, 503, e.Status)
	assert.Equal(t, "policy_timeout", e.Error.Code)
}

func TestE2EPolicyEditLossAfterClientSawBytes(t *testing.T) {
	t.Parallel()
	dir := editedPolicies(t, [2]string{`code: '"upstream_connection_lost"'`, `code: '"policy_lost"'`})
	s := newStack(t, e2etest.CmdScript(), withConfig(func(c *gateway.Config) { c.Policies = dir }))
	c := s.dial("sess-edit-loss")
	e1 := c.ok(create(nil, user("one")))
	s.emu.SetCreateFault(2, emulator.CreateFault{DropAfterEvents: 2})
	r := c.turn(chained(e1.Response.ID, user("two")))
	e := c.oneError(r)
	assert.Equal(t, []string{"response.created", "response.in_progress", "error"}, r.types())
	assert.Equal(t, "policy_lost", e.Error.Code, "recovery.client_written reaches the rules")

	// HTTP says the same through the same rule.
	s.emu.SetCreateFault(len(s.creates())+1, emulator.CreateFault{DropAfterEvents: 2})
	_, body := s.post(create(nil, user("hi")), "sess-edit-loss-http")
	events := parseSSE(t, body)
	require.NotEmpty(t, events)
	assert.Contains(t, string(events[len(events)-1].data), `"policy_lost"`)
}

func TestE2EPolicyEditUpstreamCache(t *testing.T) {
	t.Parallel()
	// Default: a completed response stays chainable on its connection, so the next chained
	// turn goes out as is.
	def := newStack(t, e2etest.CmdScript())
	c := def.dial("sess-cache-default")
	e1 := c.ok(create(nil, user("one")))
	before := def.fired()
	c.ok(chained(e1.Response.ID, user("two")))
	def.requireFired(before, []string{"strict_incremental_ok"}, "fresh_connection_replay")
	assert.Equal(t, e1.Response.ID, def.lastCreate().PreviousResponseID)

	// Edited: the connection is said to hold nothing, so the same turn is replayed.
	dir := editedPolicies(t, [2]string{`set_upstream_cached: response.id`, `set_upstream_cached: '""'`})
	s := newStack(t, e2etest.CmdScript(), withConfig(func(c *gateway.Config) { c.Policies = dir }))
	c = s.dial("sess-cache-edited")
	e1 = c.ok(create(nil, user("one")))
	before = s.fired()
	c.ok(chained(e1.Response.ID, user("two")))
	s.requireFired(before, []string{"fresh_connection_replay"})
	assert.Empty(t, s.lastCreate().PreviousResponseID, "sent as the replay")
}

func TestE2EPolicyEditAnchor(t *testing.T) {
	t.Parallel()
	// Edited: no response ever becomes the anchor, so an ESC no longer gets its aborted
	// outputs (the default set injects them: TestE2EEscInjectsAbortedForUnansweredCalls).
	dir := editedPolicies(t, [2]string{"       size(response.unanswered_calls) > 0)\n    actions:\n      - set_anchor: response.id",
		"       size(response.unanswered_calls) > 0)\n    actions:\n      - clear_anchor"})
	s := newStack(t, e2etest.CmdScript(), withConfig(func(c *gateway.Config) { c.Policies = dir }))
	c := s.dial("sess-anchor-edited")
	resp1 := startCalls(t, c, "call_A")
	before := s.fired()
	c.turn(chained(resp1, user("<turn_aborted>")))
	s.requireFired(before, nil, "aborted_injected")
}
