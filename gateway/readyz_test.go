package gateway_test

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/gateway"
	"chainmend/statestore"
)

// readyStore is a local store whose readiness the test sets.
type readyStore struct {
	statestore.Store
	err error
}

func (s *readyStore) Ready() error { return s.err }

// TestReadyzFollowsTheStore: a store that cannot work as configured makes /readyz 503; an
// outage (served from the local tier) keeps it 200 and says so (issue 16 item 1).
func TestReadyzFollowsTheStore(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		code int
		body string
	}{
		{"ready", nil, 200, "ready"},
		{"degraded", fmt.Errorf("breaker open: %w", statestore.ErrDegraded), 200, "degraded"},
		{"misconfigured", fmt.Errorf("127.0.0.1:6379 is a cluster node: %w", statestore.ErrRedisURL), 503, "cluster node"},
		{"closed", errors.New("store closed"), 503, "closed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inner, err := statestore.New(statestore.WithLogger(slog.New(slog.DiscardHandler)))
			require.NoError(t, err)
			t.Cleanup(func() { _ = inner.Close() })
			cfg := gateway.DefaultConfig()
			cfg.Policies = "../policies"
			quiet := slog.New(slog.DiscardHandler)
			srv, err := gateway.New(cfg, gateway.WithStore(&readyStore{Store: inner, err: tc.err}), gateway.WithLogger(quiet))
			require.NoError(t, err)
			_, err = gateway.NewReloader(srv).Reload()
			require.NoError(t, err)
			hs := httptest.NewServer(srv.Handler())
			defer hs.Close()
			resp, err := http.Get(hs.URL + "/readyz")
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			assert.Equal(t, tc.code, resp.StatusCode)
			assert.Contains(t, string(body), tc.body)
		})
	}
}
