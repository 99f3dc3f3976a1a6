package gateway

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestTenantOf(t *testing.T) {
	a := TenantOf("Bearer sk-secret-1")
	assert.Len(t, a, tenantHexLen)
	assert.Equal(t, a, TenantOf("bearer   sk-secret-1 "), "scheme case and spaces do not split a tenant")
	assert.NotEqual(t, a, TenantOf("Bearer sk-secret-2"))
	assert.NotContains(t, a, "secret")
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
