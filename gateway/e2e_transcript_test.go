package gateway_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/gateway"
	"chainmend/internal/e2etest"
	"chainmend/statestore"
)

// TestE2ETranscriptDelta: every HTTP turn is a full create; when it repeats the stored
// transcript and extends it, the commit appends only the new items (issue 14), and the
// transcript is the same as a reset would have made it (a replay after it is whole). When it
// repeats only the start of the stored transcript, the store keeps that start.
func TestE2ETranscriptDelta(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	history := []obj{user("one")}
	for turn := 1; turn <= 3; turn++ {
		resp, body := s.post(create(nil, history...), "sess-delta")
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
		b := s.store.lastBatch()
		if turn == 1 {
			assert.True(t, b.ReplayReset, "the first full create starts the transcript")
		} else {
			assert.False(t, b.ReplayReset, "turn %d extends the stored transcript", turn)
			assert.Len(t, b.ReplayAppend, 2, "turn %d ships its new user message and the answer only", turn)
		}
		// The client's next full create: everything so far, the answer, a new message.
		var out []obj
		for _, e := range parseSSE(t, body) {
			if e.name != "response.output_item.done" {
				continue
			}
			var v struct {
				Item obj `json:"item"`
			}
			require.NoError(t, json.Unmarshal(e.data, &v))
			out = append(out, v.Item)
		}
		history = append(append(history, out...), user("more"))
	}
	// The transcript is whole: what the last full create sent, and its answer.
	tenant, ok := gateway.TenantOf(http.Header{"Authorization": {"Bearer " + testSecret}}, gateway.DefaultTenantHeaders)
	require.True(t, ok)
	tr, res := s.store.Replay(context.Background(), statestore.Scope{Tenant: tenant, Session: "sess-delta"})
	require.Equal(t, statestore.Hit, res)
	assert.Len(t, tr.Items, len(history)-1, "every item of the conversation, once")

	// The stored transcript less its last item, and another message instead (a client that
	// resends its history with a new ending): the stored start is kept, and only the new
	// message and the answer travel.
	scope := statestore.Scope{Tenant: tenant, Session: "sess-delta"}
	other := append(append([]obj(nil), history[:len(history)-2]...), user("something else"))
	resp, body := s.post(create(nil, other...), "sess-delta")
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	b := s.store.lastBatch()
	assert.True(t, b.ReplayReset)
	assert.Equal(t, len(history)-2, b.ReplayKeep, "the shared start of the conversation stays in the store")
	assert.Len(t, b.ReplayAppend, 2, "the new message and the answer only")
	tr, res = s.store.Replay(context.Background(), scope)
	require.Equal(t, statestore.Hit, res)
	require.Len(t, tr.Items, len(other)+1, "the transcript is the create and its answer")
	assert.Contains(t, string(tr.Items[len(other)-1].Raw), "something else")

	// An edited history (the first message changed) resets the transcript.
	edited := append([]obj{user("one, edited")}, history[1:]...)
	resp, body = s.post(create(nil, edited...), "sess-delta")
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	assert.True(t, s.store.lastBatch().ReplayReset, "an edited history is no extension")
	assert.Zero(t, s.store.lastBatch().ReplayKeep, "nothing of it is kept")
}
