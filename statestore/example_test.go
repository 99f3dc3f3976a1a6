package statestore_test

import (
	"context"
	"fmt"

	"chainmend/statestore"
)

// Example shows one turn's reads and its bookkeeping. Without WithRedisURL
// the store is local-only; with it the same calls share state across
// gateway instances.
func Example() {
	ctx := context.Background()
	store, err := statestore.New() // e.g. statestore.WithRedisURL("redis://cache:6379")
	if err != nil {
		panic(err)
	}
	defer store.Close()

	// The gateway names the tenant (a hash of the credentials) and the session.
	scope := statestore.Scope{Tenant: "9f86d081884c7d659a2feaa0c55ad015", Session: "0196f4c2-7a0e"}

	// Turn context: the anchor, then the pending calls of that response.
	if _, r := store.Anchor(ctx, scope); r == statestore.Miss {
		fmt.Println("new session")
	}

	// After the terminal event: record what the response left pending.
	anchor := "resp_1"
	_ = store.Commit(ctx, statestore.Batch{
		Scope:       scope,
		PutPending:  &statestore.PendingPut{ResponseID: "resp_1", Calls: []statestore.Call{{ID: "call_1", Kind: "function_call"}}},
		Anchor:      &anchor,
		ReplayReset: true,
		ReplayAppend: []statestore.ReplayItem{
			{Raw: []byte(`{"type":"message","role":"user","content":"hi"}`), Type: "message"},
			{Raw: []byte(`{"type":"function_call","call_id":"call_1","name":"ls","arguments":"{}"}`), Type: "function_call", CallID: "call_1"},
		},
		ReplayLastResponseID: "resp_1",
	})

	id, _ := store.Anchor(ctx, scope)
	calls, r := store.Pending(ctx, scope.Tenant, id)
	tr, _ := store.Replay(ctx, scope)
	fmt.Println(id, r, calls, len(tr.Items), tr.LastResponseID)
	// Output:
	// new session
	// resp_1 hit [{call_1 function_call}] 2 resp_1
}
