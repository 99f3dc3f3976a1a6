package engine_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
)

// TestActionsDocumented: every action the engine knows has a description, and the
// documented defaults are what an omitted argument does.
func TestActionsDocumented(t *testing.T) {
	actions := engine.Actions()
	require.Len(t, actions, 19, "a new action needs its entry in actionDocs and in docs/policies.md")
	for _, a := range actions {
		assert.NotEmpty(t, a.Doc, "action %s has no description in actionDocs", a.Name)
		for _, arg := range a.Args {
			if !arg.Required && arg.Type != "word" {
				assert.NotEmpty(t, arg.Default, "%s.%s is optional but documents no default", a.Name, arg.Name)
			}
		}
	}

	snap := compileRules(t, `
  - id: reject-bare
    stage: pre_send
    when: "true"
    actions:
      - reject: {code: '"c"', message: '"m"'}
`)
	out := snap.Evaluate(engine.StagePreSend, newTurn(t, create("")))
	require.NotNil(t, out.Reject)
	byName := map[string]engine.ActionInfo{}
	for _, a := range actions {
		byName[a.Name] = a
	}
	defaults := map[string]string{}
	for _, arg := range byName["reject"].Args {
		defaults[arg.Name] = arg.Default
	}
	assert.Equal(t, "400", defaults["status"])
	assert.Equal(t, 400, out.Reject.Status)
	assert.Equal(t, `"invalid_request_error"`, defaults["type"])
	assert.Equal(t, "invalid_request_error", out.Reject.Type)
	assert.True(t, byName["reject"].Terminal)
	assert.Equal(t, "stage", byName["run_stage"].Args[0].Name)
}

func TestHelpers(t *testing.T) {
	assert.Equal(t, []string{"intersect", "is_response_id", "overlaps", "starts_with", "without"}, engine.Helpers())
}
