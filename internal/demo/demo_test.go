package demo

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDemo keeps `make demo` honest: the conversation breaks without the gateway and does
// not break through it, and the report names the repairs.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	require.NoError(t, Run(ctx, &out, "../../policies"))
	report := out.String()
	assert.Contains(t, report, "-> 2 of 4 turns failed upstream")
	assert.Contains(t, report, "-> 0 of 4 turns failed")
	assert.Contains(t, report, "fresh_connection_replay")
	assert.Contains(t, report, "aborted_injected")
}
