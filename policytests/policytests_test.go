package policytests_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
	"chainmend/internal/policytest"
)

// TestDefaultPolicies runs every fixture of this directory against ../policies, one subtest
// per case, and requires every rule to be fired by some case.
func TestDefaultPolicies(t *testing.T) {
	snap, diags, err := engine.LoadDir("../policies")
	require.NoError(t, err)
	require.False(t, diags.HasErrors(), "policies do not compile:\n%s", diags)
	files, err := policytest.LoadFiles(".")
	require.NoError(t, err)
	rep, err := policytest.Run(snap, files, nil)
	require.NoError(t, err)
	for _, r := range rep.Results {
		t.Run(r.Name(), func(t *testing.T) {
			for _, f := range r.Failures {
				t.Error(f)
			}
		})
	}
	assert.GreaterOrEqual(t, len(rep.Results), 60, "the regression matrix needs at least 60 cases")
	assert.Empty(t, rep.Unfired, "rules that no fixture fires")
}
