package gateway

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTenantOf(t *testing.T) {
	h := func(kv ...string) http.Header {
		hd := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			hd.Set(kv[i], kv[i+1])
		}
		return hd
	}
	tenant := func(hd http.Header) string {
		t.Helper()
		v, ok := TenantOf(hd, DefaultTenantHeaders)
		require.True(t, ok)
		require.Len(t, v, tenantHexLen)
		require.NotContains(t, v, "secret")
		return v
	}
	a := tenant(h("Authorization", "Bearer sk-secret-1"))
	assert.Equal(t, a, tenant(h("Authorization", "bearer   sk-secret-1 ")), "scheme case and spaces do not split a tenant")
	assert.NotEqual(t, a, tenant(h("Authorization", "Bearer sk-secret-2")))
	for _, tc := range []struct {
		name   string
		a, b   http.Header
		shared bool
	}{
		{"two Azure keys", h("api-key", "secret-a"), h("api-key", "secret-b"), false},
		{"one key, two projects", h("Authorization", "Bearer k", "OpenAI-Project", "p1"), h("Authorization", "Bearer k", "OpenAI-Project", "p2"), false},
		{"one key, two organizations", h("Authorization", "Bearer k", "OpenAI-Organization", "o1"), h("Authorization", "Bearer k", "OpenAI-Organization", "o2"), false},
		{"a key with and without a project", h("Authorization", "Bearer k"), h("Authorization", "Bearer k", "OpenAI-Project", "p1"), false},
		{"the same value under two headers", h("Authorization", "Bearer k"), h("api-key", "k"), false},
		{"the same credentials", h("Authorization", "Bearer k", "OpenAI-Project", "p1"), h("Authorization", "Bearer k", "OpenAI-Project", "p1"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.shared, tenant(tc.a) == tenant(tc.b))
		})
	}
	_, ok := TenantOf(h("Session-Id", "s"), DefaultTenantHeaders)
	assert.False(t, ok, "no credential: no tenant")
	v, ok := TenantOf(h("X-Tenant", "t1"), []string{"X-Tenant"})
	assert.True(t, ok, "an operator's tenant header names a tenant")
	assert.Len(t, v, tenantHexLen)
	assert.NotEqual(t, connectionTenant("c1"), connectionTenant("c2"), "anonymous connections share nothing")
}

func TestSessionOf(t *testing.T) {
	h := func(kv ...string) http.Header {
		hd := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			hd.Set(kv[i], kv[i+1])
		}
		return hd
	}
	long := strings.Repeat("x", maxSessionLen+1)
	for _, tc := range []struct {
		name    string
		h       http.Header
		headers []string
		pck     string
		conn    string
		want    string
		hashed  bool
	}{
		{"session-id header wins", h("session-id", "S1", "session_id", "S2"), DefaultSessionHeaders, "P", "C", "S1", false},
		{"older session_id header", h("session_id", "S2"), DefaultSessionHeaders, "P", "C", "S2", false},
		{"configured order", h("session-id", "S1", "x-thread", "T"), []string{"x-thread", "session-id"}, "P", "C", "T", false},
		{"no configured header", h("session-id", "S1"), nil, "P", "C", "P", false},
		{"prompt_cache_key", h(), DefaultSessionHeaders, "P", "C", "P", false},
		{"connection", h(), DefaultSessionHeaders, "", "C", "conn:C", false},
		{"long id is hashed", h("session-id", long), DefaultSessionHeaders, "", "C", "", true},
		{"control chars are hashed", h(), DefaultSessionHeaders, "a\nb", "C", "", true},
		{"client cannot forge a hashed id", h("session-id", "h:abc"), DefaultSessionHeaders, "", "C", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := SessionOf(tc.h, tc.headers, tc.pck, tc.conn)
			if tc.hashed {
				assert.True(t, strings.HasPrefix(got, "h:"), got)
				assert.Len(t, got, 34)
				return
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestTenantOfStable pins tenant ids: they name keys in Redis, so a gateway upgrade that
// spelled them differently would orphan every session's state. The values are the fmt-based
// spelling of the first release.
func TestTenantOfStable(t *testing.T) {
	for _, tc := range []struct {
		hdr  http.Header
		want string
	}{
		{http.Header{"Authorization": {"Bearer sk-secret-1"}}, "0f2481529ccf87feaa0a5434ceb0d2a1"},
		{http.Header{"Authorization": {"Bearer k"}, "Openai-Project": {"p1"}, "Api-Key": {"a"}}, "f475ec7f271c53af0c78e73dfb6e01b6"},
	} {
		got, ok := TenantOf(tc.hdr, DefaultTenantHeaders)
		require.True(t, ok)
		assert.Equal(t, tc.want, got)
	}
}
