package policytest

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
)

func strp(s string) *string { return &s }

// parseCase parses a one-case fixture file.
func parseCase(t *testing.T, body string) (*File, *Case) {
	t.Helper()
	f, err := ParseFile("test.yaml", []byte("cases:\n"+body))
	require.NoError(t, err)
	require.Len(t, f.Cases, 1)
	return f, &f.Cases[0]
}

// TestBuildTurnState: the state fields of a fixture reach the turn.
func TestBuildTurnState(t *testing.T) {
	tests := []struct {
		name  string
		state string
		check func(t *testing.T, turn *engine.Turn)
	}{
		{"defaults: the store answered, no transcript", "", func(t *testing.T, turn *engine.Turn) {
			assert.Equal(t, engine.Replay{Known: true}, turn.Replay)
			assert.Empty(t, turn.Lane)
			assert.Nil(t, turn.Response)
		}},
		{"a given replay is known and available", "state: {replay: {last_response_id: resp_1}}", func(t *testing.T, turn *engine.Turn) {
			assert.True(t, turn.Replay.Known)
			assert.True(t, turn.Replay.Available)
			assert.Equal(t, "resp_1", turn.Replay.LastResponseID)
		}},
		{"replay unknown", "state: {replay: {known: false}}", func(t *testing.T, turn *engine.Turn) {
			assert.Equal(t, engine.Replay{}, turn.Replay)
		}},
		{"replay known absent", "state: {replay: {available: false}}", func(t *testing.T, turn *engine.Turn) {
			assert.Equal(t, engine.Replay{Known: true}, turn.Replay)
		}},
		{"a timeout is a transport failure", "state: {error: {timeout: true, message: late}}", func(t *testing.T, turn *engine.Turn) {
			assert.Equal(t, &engine.UpstreamError{Transport: true, Timeout: true, Message: "late"}, turn.Error)
		}},
		{"anchor, lane and the pending calls' response", "state: {anchor: resp_1, lane: lane_a, pending: {calls: [call_a, 'call_b:custom_tool_call']}}", func(t *testing.T, turn *engine.Turn) {
			assert.Equal(t, "resp_1", turn.Anchor)
			assert.Equal(t, "lane_a", turn.Lane)
			assert.Equal(t, engine.Pending{Known: true, ResponseID: "resp_1", Calls: []engine.PendingCall{
				{ID: "call_a", Kind: "function_call"}, {ID: "call_b", Kind: "custom_tool_call"}}}, turn.Pending)
		}},
		{"the response of a post_response case", "stage: post_response\n    response: {id: resp_2, status: completed, event: response.completed, output: [{type: function_call, call_id: call_b, name: f, arguments: '{}'}]}", func(t *testing.T, turn *engine.Turn) {
			require.NotNil(t, turn.Response)
			assert.Equal(t, "resp_2", turn.Response.ID)
			assert.Equal(t, "completed", turn.Response.Status)
			assert.Equal(t, "response.completed", turn.Response.Event)
			require.Len(t, turn.Response.Items, 1)
			assert.Equal(t, "call_b", turn.Response.Items[0].CallID)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := "  - name: c\n    request: {type: response.create}\n"
			if tc.state != "" {
				body += "    " + tc.state + "\n"
			}
			f, c := parseCase(t, body)
			turn, err := BuildTurn(f, c)
			require.NoError(t, err)
			tc.check(t, turn)
		})
	}
	_, c := parseCase(t, "  - name: c\n    request: {type: response.create}\n    state: {replay: {known: false, last_response_id: resp_1}}\n")
	_, err := BuildTurn(&File{}, c)
	assert.ErrorContains(t, err, "describe no transcript")
}

// TestEffectsDiff: every expected effect is compared, and only those given.
func TestEffectsDiff(t *testing.T) {
	got := &engine.Effects{
		Anchor:         strp("resp_2"),
		PutPending:     &engine.PendingPut{ResponseID: "resp_2", Calls: []engine.PendingCall{{ID: "call_b", Kind: "function_call"}}},
		DeletePending:  []string{"resp_1"},
		Transcript:     engine.TranscriptAppend,
		UpstreamCached: strp("resp_2"),
	}
	tests := []struct {
		name, effects string
		want          []string
	}{
		{"nothing given", "{}", nil},
		{"all match", "{anchor: resp_2, pending: {response_id: resp_2, calls: [call_b]}, delete_pending: [resp_1], transcript: append, upstream_cached: resp_2}", nil},
		{"anchor cleared wanted", `{anchor: ""}`, []string{`effects.anchor: want "", got "resp_2"`}},
		{"pending kind differs", "{pending: {response_id: resp_2, calls: ['call_b:custom_tool_call']}}", []string{"effects.pending: want resp_2 [call_b:custom_tool_call], got resp_2 [call_b:function_call]"}},
		{"no pending wanted", "{pending: null}", []string{"effects.pending: want none, got resp_2 [call_b:function_call]"}},
		{"nothing deleted wanted", "{delete_pending: []}", []string{"effects.delete_pending: want [], got [resp_1]"}},
		{"transcript differs", "{transcript: keep}", []string{"effects.transcript: want keep, got append"}},
		{"upstream differs", `{upstream_cached: ""}`, []string{`effects.upstream_cached: want "", got "resp_2"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, c := parseCase(t, "  - name: c\n    request: {type: response.create}\n    expect: {effects: "+tc.effects+"}\n")
			diffs, err := effectsDiff(c.Expect.Effects, got)
			require.NoError(t, err)
			assert.Equal(t, tc.want, diffs)
		})
	}
	_, c := parseCase(t, "  - name: c\n    request: {type: response.create}\n    expect: {effects: {anchor: x, upstream_cached: y, pending: {response_id: r}}}\n")
	diffs, err := effectsDiff(c.Expect.Effects, &engine.Effects{})
	require.NoError(t, err)
	assert.Equal(t, `effects.anchor: want "x", got unchanged|effects.pending: want r [], got none|effects.upstream_cached: want "y", got unchanged`, strings.Join(diffs, "|"))
}
