package gateway

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReadBodyGrowth: a body grows by doubling until an eighth of its announced length has
// arrived, then to that length in one step; what it holds of the budget is what it
// allocated, and all of it is given back.
func TestReadBodyGrowth(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Upstream = "http://127.0.0.1:1/v1"
	srv, err := New(cfg, WithLogger(slog.New(slog.DiscardHandler)), WithRegistry(prometheus.NewRegistry()))
	require.NoError(t, err)
	defer srv.Close()
	for _, tc := range []struct {
		name    string
		size    int
		chunked bool
		maxHeld int
	}{
		{"small", 3 << 10, false, 4 << 10},
		{"175 KB announced: 64 KB, then the rest at once", 175 << 10, false, 184 << 10},
		{"175 KB chunked: doubling", 175 << 10, true, 4<<10 + 4<<10 + 8<<10 + 16<<10 + 32<<10 + 64<<10 + 128<<10 + 256<<10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := bytes.Repeat([]byte("x"), tc.size)
			r := httptest.NewRequest(http.MethodPost, "/v1/responses", bytes.NewReader(want))
			if tc.chunked {
				r.ContentLength = -1
			}
			w := httptest.NewRecorder()
			got, held, err := srv.readBody(w, r)
			require.NoError(t, err)
			assert.Equal(t, want, got)
			assert.GreaterOrEqual(t, held, int64(cap(got)), "the budget covers the buffer")
			assert.LessOrEqual(t, held, int64(tc.maxHeld))
			srv.bodies.give(held)
			assert.Zero(t, srv.bodies.used.Load(), "all of it given back")
		})
	}
}
